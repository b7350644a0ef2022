#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "runtime/step_builder.h"

namespace trident {

double PerplexityResult::perplexity() const {
  return tokens > 0 ? std::exp(nll_sum / double(tokens)) : 0.0;
}

int perplexity_kv_pages(const PerplexityOptions& options) {
  return options.windows_per_step * pages_for_tokens(options.window, AttentionMeta::kPageSize);
}

namespace {

// -log softmax(logits)[target], in double so that summing tens of thousands of terms stays exact
// to far below the 0.1% the comparison with transformers asks for.
double token_nll(const float* logits, int vocab, int32_t target) {
  double max = logits[0];
  for (int v = 1; v < vocab; ++v) max = std::max(max, double(logits[v]));
  double sum = 0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(double(logits[v]) - max);
  return max + std::log(sum) - double(logits[target]);
}

}  // namespace

PerplexityResult score_perplexity(Engine& engine, const std::vector<int32_t>& stream,
                                  int32_t bos_id, const PerplexityOptions& o,
                                  const std::function<void(int, int)>& progress) {
  TRI_CHECK(o.window > 0 && o.windows_per_step > 0 && o.max_windows >= 0,
            "perplexity: window {}, windows per step {} and max windows {} must be positive",
            o.window, o.windows_per_step, o.max_windows);
  TRI_CHECK(bos_id >= 0, "perplexity: the tokenizer has no BOS token to start each window with");
  TRI_CHECK(!stream.empty(), "perplexity: the text has no tokens");
  TRI_CHECK(o.window < engine.max_context(),
            "perplexity window of {} tokens does not fit the context of {} (--max-context)",
            o.window, engine.max_context());
  TRI_CHECK(engine.pool().total_pages() >= perplexity_kv_pages(o),
            "perplexity needs {} KV pages, the pool has {}", perplexity_kv_pages(o),
            engine.pool().total_pages());
  const int vocab = engine.config().vocab_size;
  int total = int((stream.size() + o.window - 1) / o.window);
  if (o.max_windows > 0) total = std::min(total, o.max_windows);

  PerplexityResult r;
  std::vector<float> logits;
  for (int first = 0; first < total; first += o.windows_per_step) {
    const int n = std::min(o.windows_per_step, total - first);
    std::vector<std::vector<int32_t>> inputs(n), pages(n);
    std::vector<StepChunk> chunks;
    for (int w = 0; w < n; ++w) {
      size_t begin = size_t(first + w) * o.window;
      size_t end = std::min(stream.size(), begin + o.window);
      inputs[w].push_back(bos_id);
      inputs[w].insert(inputs[w].end(), stream.begin() + begin, stream.begin() + end - 1);
      int need = pages_for_tokens(int(inputs[w].size()), AttentionMeta::kPageSize);
      TRI_CHECK(engine.pool().allocate(need, pages[w]), "perplexity: KV pool out of pages");
      StepChunk c{&inputs[w], 0, int(inputs[w].size()), &pages[w], true};
      c.all_logits = true;
      chunks.push_back(c);
    }
    StepInput in = upload_step(engine.backend(), build_step(chunks));
    Tensor out = engine.model().forward(in, engine.cache());
    logits.resize(size_t(out.numel()));
    engine.backend().to_host(out, logits.data());
    int64_t row = 0;
    for (int w = 0; w < n; ++w) {
      size_t begin = size_t(first + w) * o.window;
      for (size_t t = 0; t < inputs[w].size(); ++t, ++row)
        r.nll_sum += token_nll(logits.data() + row * vocab, vocab, stream[begin + t]);
      r.tokens += int64_t(inputs[w].size());
      engine.pool().release(pages[w]);
    }
    r.windows += n;
    if (progress) progress(r.windows, total);
  }
  return r;
}

}  // namespace trident
