#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace trident {

float token_logprob(const float* logits, int vocab, int32_t id) {
  float m = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - m));
  return float(logits[id] - m - std::log(sum));
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  TRI_CHECK(params.temperature >= 0 && std::isfinite(params.temperature),
            "temperature must be >= 0, got {}", params.temperature);
  TRI_CHECK(params.top_p > 0 && params.top_p <= 1, "top_p must be in (0, 1], got {}", params.top_p);
  TRI_CHECK(params.top_k >= 0, "top_k must be >= 0, got {}", params.top_k);
}

SampledToken Sampler::sample(const float* logits, int vocab) {
  int32_t best = int32_t(std::max_element(logits, logits + vocab) - logits);
  if (params_.temperature == 0.0f || params_.top_k == 1)
    return {best, token_logprob(logits, vocab, best)};

  // Candidates by descending logit (ties to the lower id), cut to top_k.
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  const int k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
  order_.resize(k);

  probs_.resize(k);
  const float inv_t = 1.0f / params_.temperature;
  const float m = logits[order_[0]];
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += probs_[i] = std::exp((logits[order_[i]] - m) * inv_t);
  // Nucleus: the smallest prefix whose mass reaches top_p.
  int n = k;
  if (params_.top_p < 1.0f) {
    double acc = 0;
    for (int i = 0; i < k; ++i) {
      acc += probs_[i] / sum;
      if (acc >= params_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  double mass = std::accumulate(probs_.begin(), probs_.begin() + n, 0.0);
  double u = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  int32_t chosen = order_[n - 1];
  for (int i = 0; i < n; ++i) {
    u -= probs_[i];
    if (u < 0) {
      chosen = order_[i];
      break;
    }
  }
  return {chosen, token_logprob(logits, vocab, chosen)};
}

}  // namespace trident
