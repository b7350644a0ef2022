// Rotary frequencies for DeepSeek's decoupled RoPE, plain or YaRN-scaled.
#pragma once

#include "backend/backend.h"
#include "model/config.h"

namespace trident {

// Host tensors: inv_freq [qk_rope_head_dim / 2] f32 and the YaRN attention factor.
RopeTable make_rope_table(const ModelConfig& config);

}  // namespace trident
