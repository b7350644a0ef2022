// The DeepSeek-V3 forward pass (MLA attention, DeepSeekMoE), written once against Backend's ops.
// One call runs one step of a batch that may mix prefills, chunked prefills and decodes.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/step.h"
#include "model/weights.h"

namespace trident {

KvCache make_kv_cache(Backend& backend, const ModelConfig& config, int n_pages);

class DeepseekV3 {
 public:
  DeepseekV3(ModelConfig config, ModelWeights weights, Backend& backend);

  // Writes the new tokens' latents into `cache` and returns logits [L, vocab] f32 in backend
  // memory, valid until the next call.
  Tensor forward(const StepInput& in, KvCache& cache);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }

 private:
  Tensor attention(int layer, const Tensor& h, const StepInput& in, KvCache& cache);
  Tensor mlp(const MlpWeights& w, const Tensor& h);
  Tensor moe(const MoeWeights& w, const Tensor& h);

  ModelConfig config_;
  ModelWeights weights_;
  Backend& backend_;
  RopeTable rope_;
  MlaParams mla_;
  GateParams gate_;
};

}  // namespace trident
