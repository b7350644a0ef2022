// A small DeepSeek-V3-shaped model with random weights, built in memory from a seed: every rank
// builds the same model, holding all experts (the reference) or only its own (expert parallel).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace trident::testing {

struct TinyMoeSpec {
  bool fp8 = false;  // linear weights FP8 e4m3 with 128x128 block scales, as DeepSeek ships them
  uint64_t seed = 1;
  // A router bias that sends every token to these experts (skewed routing); empty: none.
  std::vector<int> favoured_experts;
  // Routed experts' intermediate size (larger makes the experts the bulk of a step's work).
  int moe_intermediate = 64;
};

// 3 layers (1 dense, 2 MoE), hidden 256, 16 routed experts in 4 groups, top-4, 1 shared expert.
ModelConfig tiny_moe_config(const TinyMoeSpec& spec);

// The routed experts are those `holds(layer, expert)` accepts (all when it is empty); every
// other tensor is the same whatever is held.
ModelWeights tiny_moe_weights(const ModelConfig& config, const TinyMoeSpec& spec,
                              const std::function<bool(int, int)>& holds = {});
// One routed expert, the same as tiny_moe_weights makes it (an expert load balancer's source).
MlpWeights tiny_moe_expert(const ModelConfig& config, const TinyMoeSpec& spec, int layer,
                           int expert);

}  // namespace trident::testing
