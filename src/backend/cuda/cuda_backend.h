// The CUDA backend: bf16 activations, FP8 block-scaled or BF16 weights, Triton kernels compiled
// ahead of time into the library. Ops run in order on the device's stream; synchronize() or
// to_host() waits for them. Ops without a kernel yet throw "not implemented on CUDA yet: <op>".
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>

#include "backend/backend.h"
#include "backend/cuda/cuda_ops.h"

namespace trident::cuda {

class DeviceContext;

class CudaBackend final : public Backend {
 public:
  // memory_fraction > 0: the memory plan. The backend reserves, at once, what is left of that
  // fraction of the device's memory after other processes' use; weights, KV cache and every
  // step's workspace then come from that reservation (DeviceContext::reserve). 0: the pool grows
  // as needed (tests, tools).
  explicit CudaBackend(int device_ordinal, double memory_fraction = 0);
  ~CudaBackend() override;

  Device device() const override { return Device::CUDA; }
  DType activation_dtype() const override { return DType::BF16; }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override;
  Tensor upload(const Tensor& host) override;
  void to_host(const Tensor& src, void* dst) override;
  void from_host(const void* src, Tensor& dst) override;
  void synchronize() override;
  std::optional<DeviceMemory> device_memory() override;
  void reset_memory_peak() override;
  bool supports_graphs() const override { return true; }
  void reserve_graph_workspace(int64_t bytes) override;
  std::unique_ptr<Graph> capture_graph(const std::function<void()>& ops) override;

  void embedding(const Tensor& ids, const Tensor& table, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override;
  void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps,
                    Tensor& out) override;
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out) override;
  void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void add(Tensor& a, const Tensor& b) override;
  void mla_rope_cache_write(Tensor& q, const Tensor& kv, const MlaWeights& w, const MlaParams& p,
                            const RopeTable& rope, const AttentionMeta& meta,
                            KvLayer& cache) override;
  void mla_attention(const Tensor& q, const MlaWeights& w, const MlaParams& p,
                     const AttentionMeta& meta, const KvLayer& cache, Tensor& out) override;
  void moe_gate(const Tensor& logits, const Tensor& bias, const GateParams& p, Tensor& topk_ids,
                Tensor& topk_weights) override;
  void moe_experts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                   const ExpertWeights& experts, Tensor& out) override;
  void add_expert_counts(const Tensor& topk_ids, Tensor& counts) override;

  // DeepSeek's per-token-group activation quantization, the first half of an FP8 linear:
  // x [T, K] bf16 -> q [T, K] e4m3, scales [T, ceil(K / 128)] f32.
  void quantize_fp8(const Tensor& x, Tensor& q, Tensor& scales);
  // The second half: out = (q * scales) W^T for an FP8 weight.
  void fp8_gemm(const Tensor& q, const Tensor& scales, const LinearWeight& w, Tensor& out);

  // Pins the GEMM tile and split-K instead of the tuned table and heuristic (tests, tuning);
  // nullopt restores the defaults.
  void set_gemm_override(std::optional<GemmChoice> choice) { gemm_override_ = std::move(choice); }
  // The tile and split the last GEMM used.
  const GemmChoice& last_gemm() const { return last_gemm_; }
  // Pins the MLA attention variant and context split (tests, benchmarks); nullopt restores the
  // defaults.
  void set_mla_override(std::optional<MlaChoice> choice) { mla_override_ = std::move(choice); }
  // The variant and split the last mla_attention used.
  const MlaChoice& last_mla() const { return last_mla_; }
  // Pins the grouped GEMM variants of moe_experts ("kernel/variant" each; empty: chosen from
  // the shape) instead of the defaults (tests, benchmarks); nullopt restores them.
  void set_moe_override(std::optional<MoeChoice> choice) { moe_override_ = std::move(choice); }
  // The variants the last moe_experts ran.
  const MoeChoice& last_moe() const { return last_moe_; }
  // The device tables of the expert weights moe_experts has seen (benchmarks run its steps).
  ExpertTables& expert_tables() { return expert_tables_; }

  // Draws one token per row of logits [B, V] (f32 or bf16) into ids [B] i32 with each row's
  // parameters, as the CPU sampler's rules do (runtime/sampler.h), from a random stream keyed by
  // the row's seed at its step.
  bool samples_on_device() const override { return true; }
  void sample(const Tensor& logits, std::span<const SampleRow> rows, Tensor& ids) override;

  DeviceContext& context() { return ops_.device; }

 private:
  OpContext ops_;
  Tensor graph_workspace_;
  int graph_workspace_id_ = -1;
  std::optional<GemmChoice> gemm_override_;
  GemmChoice last_gemm_;
  std::optional<MlaChoice> mla_override_;
  MlaChoice last_mla_;
  ExpertTables expert_tables_;
  std::optional<MoeChoice> moe_override_;
  MoeChoice last_moe_;
};

}  // namespace trident::cuda

namespace trident {

// The CUDA backend on GPU `device_ordinal`; fails if there is no driver, no such GPU, or no
// kernels compiled for its architecture.
std::unique_ptr<Backend> make_cuda_backend(int device_ordinal = 0, double memory_fraction = 0);

}  // namespace trident
