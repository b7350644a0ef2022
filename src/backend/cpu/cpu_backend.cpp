// The CPU backend: f32 activations, weights used in place from the mapped checkpoint.
#include <cstring>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace trident {

namespace {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  DType activation_dtype() const override { return DType::F32; }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override {
    return cpu_tensor(dtype, shape);
  }
  Tensor upload(const Tensor& host) override { return host; }
  void to_host(const Tensor& src, void* dst) override { std::memcpy(dst, src.data, src.nbytes()); }
  void from_host(const void* src, Tensor& dst) override { std::memcpy(dst.data, src, dst.nbytes()); }
  void synchronize() override {}
  void reserve_graph_workspace(int64_t) override {
    fail("graphs are not supported by the CPU backend (supports_graphs() is false)");
  }
  std::unique_ptr<Graph> capture_graph(const std::function<void()>&) override {
    fail("graphs are not supported by the CPU backend (supports_graphs() is false)");
  }
  void sample(const Tensor&, std::span<const SampleRow>, Tensor&) override {
    fail("the CPU backend samples on the host (runtime/sampler.h); samples_on_device() is false");
  }

  void embedding(const Tensor& ids, const Tensor& table, Tensor& out) override {
    cpu::embedding(ids, table, out);
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    cpu::rms_norm(x, w, eps, out);
  }
  void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps,
                    Tensor& out) override {
    cpu::add_rms_norm(x, residual, w, eps, out);
  }
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out) override {
    cpu::linear(x, w, out);
  }
  void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) override {
    cpu::silu_mul(gate, up, out);
  }
  void add(Tensor& a, const Tensor& b) override { cpu::add(a, b); }
  void mla_rope_cache_write(Tensor& q, const Tensor& kv, const MlaWeights& w, const MlaParams& p,
                            const RopeTable& rope, const AttentionMeta& meta,
                            KvLayer& cache) override {
    cpu::mla_rope_cache_write(q, kv, w, p, rope, meta, cache);
  }
  void mla_attention(const Tensor& q, const MlaWeights& w, const MlaParams& p,
                     const AttentionMeta& meta, const KvLayer& cache, Tensor& out) override {
    cpu::mla_attention(q, w, p, meta, cache, out);
  }
  void moe_gate(const Tensor& logits, const Tensor& bias, const GateParams& p, Tensor& topk_ids,
                Tensor& topk_weights) override {
    cpu::moe_gate(logits, bias, p, topk_ids, topk_weights);
  }
  void moe_experts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                   const ExpertWeights& experts, Tensor& out) override {
    cpu::moe_experts(x, topk_ids, topk_weights, experts, out);
  }
  void add_expert_counts(const Tensor& topk_ids, Tensor& counts) override {
    cpu::add_expert_counts(topk_ids, counts);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace trident
