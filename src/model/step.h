// What one forward step reads and writes besides the weights: the paged latent cache and the
// step's tokens with their places in it.
#pragma once

#include <vector>

#include "backend/backend.h"

namespace trident {

// The latent KV cache of every layer, in pages of AttentionMeta::kPageSize tokens.
struct KvCache {
  std::vector<KvLayer> layers;
  int n_pages = 0;
};

// One step's input, in backend memory.
struct StepInput {
  Tensor token_ids;  // [T] i32
  AttentionMeta meta;
  Tensor logit_rows;  // [L] i32: the tokens whose next-token logits are wanted
};

}  // namespace trident
