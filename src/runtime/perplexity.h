// Perplexity of a model on a token stream: the stream is cut into consecutive windows, each fed
// as BOS followed by the window's tokens but the last, so every token of the stream is predicted
// once from the tokens before it in its window. This is how tools/perplexity_reference.py scores
// the same stream with transformers, so the two figures are comparable to the last digit.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/engine.h"

namespace trident {

struct PerplexityOptions {
  int window = 512;          // tokens scored per window (BOS is added in front)
  int max_windows = 0;       // 0: the whole stream
  int windows_per_step = 4;  // windows batched into one forward step
};

struct PerplexityResult {
  double nll_sum = 0;  // natural-log loss summed over the scored tokens
  int64_t tokens = 0;
  int windows = 0;
  double perplexity() const;
};

// KV pages the engine needs for `options` (its pool must hold at least this many).
int perplexity_kv_pages(const PerplexityOptions& options);

// Scores `stream` with `engine`; `progress(windows_done, windows_total)` is called after each step.
PerplexityResult score_perplexity(Engine& engine, const std::vector<int32_t>& stream,
                                  int32_t bos_id, const PerplexityOptions& options,
                                  const std::function<void(int, int)>& progress = {});

}  // namespace trident
