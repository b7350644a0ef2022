// Next-token sampling on the host: greedy, or temperature with top-k and top-p filtering.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace trident {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
};

struct SampledToken {
  int32_t id;
  float logprob;  // log-softmax of the unscaled logits
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  SampledToken sample(const float* logits, int vocab);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
};

// log-softmax of logits[id].
float token_logprob(const float* logits, int vocab, int32_t id);

}  // namespace trident
