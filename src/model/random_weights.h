// Random weights in the layout of DeepSeek's FP8 release, made on the backend's device, for runs
// that need a model's size and shape but not its values (`trident bench e2e`).
//
// The layout is the official checkpoint's: linear layers FP8 e4m3 [out, in] with one f32 scale
// per 128x128 block; embeddings, lm_head, router, and norms BF16; the router's correction bias
// f32 (zeros: RoutingControl sets it); kv_b_proj also split per head for the absorbed form, in
// the activation dtype, as the loader makes it.
//
// Values: e4m3 codes uniform over the 254 finite ones, block scales chosen so that a layer keeps
// its input's RMS (scale ~ 1 / (RMS of the codes * sqrt(in))), each block's scale varied by up to
// +-50%; BF16 tensors uniform with the RMS that keeps products near unit size; norms 1.
//
// Tens of GB made on the host and uploaded would take minutes, so the bulk is made on the device:
// one block of random rows per kind of value (e4m3 codes, BF16 at a scale) is uploaded once, and
// every large tensor is filled by copying rows of its block, chosen at random, with the backend's
// row gather (embedding over the tensor's bytes viewed as BF16 rows). Timing is not biased by the
// repeats: no kernel's work depends on the values, and a tensor's bytes sit at their own
// addresses, so nothing a step reads is cached because another tensor holds the same values.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <random>

#include "backend/backend.h"
#include "model/config.h"
#include "model/weights.h"

namespace trident {

class RandomWeights {
 public:
  // Bytes of one row of a random block: a tensor fills through whole rows, the rest stays zero.
  static constexpr int64_t kRowBytes = 4096;

  RandomWeights(Backend& backend, const ModelConfig& config, uint64_t seed);

  // Bytes that globals() and layer() take (an MoE layer holding `experts` routed experts), for
  // checking that a model fits before making it.
  static int64_t globals_bytes(const ModelConfig& config);
  static int64_t layer_bytes(const ModelConfig& config, bool moe, int experts,
                             DType activation_dtype);

  // Embedding, final norm and lm_head; `layers` left empty.
  ModelWeights globals();
  // Layer `layer` (dense or MoE by the config); an MoE layer holds the routed experts for which
  // `holds_expert` says yes (all when empty).
  LayerWeights layer(int layer, const std::function<bool(int expert)>& holds_expert = {});

  // Fills an existing tensor (e.g. KV cache pages) with BF16 values of RMS `rms` (a float tensor
  // of another dtype gets finite values of about that size).
  void fill(Tensor& t, float rms);
  // Fills an existing tensor with e4m3 codes drawn as the weights' are (any finite code).
  void fill_fp8_codes(Tensor& t);

 private:
  LinearWeight fp8_linear(int64_t out, int64_t in);
  Tensor bf16_tensor(std::initializer_list<int64_t> shape, float rms);
  Tensor ones(int64_t n);
  const Tensor& bf16_block(float rms);
  void fill_rows(Tensor& t, const Tensor& block);

  Backend& backend_;
  ModelConfig config_;
  std::mt19937_64 rng_;
  Tensor code_block_;  // e4m3 codes, as BF16 rows
  double code_rms_ = 0;
  std::map<float, Tensor> bf16_blocks_;
  Tensor row_ids_;  // random row numbers into a block, sliced at random offsets
};

}  // namespace trident
