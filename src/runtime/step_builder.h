// Builds a step's input (token ids, positions, page tables, cache slots) from the pieces of
// sequences that run in it: a prefill, a chunk of one, or one decode token each.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/step.h"

namespace trident {

struct StepChunk {
  const std::vector<int32_t>* tokens;  // the sequence's whole token list
  int start = 0;                       // first token of the chunk; tokens before it are cached
  int count = 0;                       // tokens in the chunk
  const std::vector<int32_t>* pages;   // the sequence's pages, enough for start + count tokens
  bool want_logits = true;             // logits for the chunk's last token
  bool all_logits = false;             // logits for every token of the chunk (scoring a text)
};

// Host tensors describing the step; `upload` moves them to the backend.
StepInput build_step(const std::vector<StepChunk>& chunks);
StepInput upload_step(Backend& backend, const StepInput& host);

}  // namespace trident
