// The CUDA ops behind CudaBackend: argument checks, variant choice, grids and launches.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/device_context.h"

namespace trident::cuda {

struct OpContext {
  DeviceContext& device;
  CUstream stream;
};

// A GEMM's tile (a variant name without its _bf16/_fp32 output suffix) and K split.
struct GemmChoice {
  std::string tile;
  int split_k = 0;  // 0: chosen from the shape
};

CUdeviceptr device_ptr(const Tensor& t);
// A new device tensor that frees its memory, in stream order, when the last copy goes.
Tensor device_tensor(DeviceContext& device, DType dtype, std::initializer_list<int64_t> shape);
// Fails unless t is on this GPU and has one of the dtypes, naming op and argument.
void expect_device_tensor(const OpContext& ctx, const Tensor& t, const char* op, const char* arg,
                          std::initializer_list<DType> dtypes);

// residual == nullptr: out = rms_norm(x) * w; else residual += x, out = rms_norm(residual) * w.
void rms_norm(const OpContext& ctx, const Tensor& x, Tensor* residual, const Tensor& w, float eps,
              Tensor& out);
void quantize_fp8(const OpContext& ctx, const Tensor& x, Tensor& q, Tensor& scales);
// out = (q * q_scales) (w * w_scales)^T; returns the tile and split it used.
GemmChoice fp8_gemm(const OpContext& ctx, const Tensor& q, const Tensor& q_scales, const Tensor& w,
                    const Tensor& w_scales, Tensor& out, const GemmChoice* forced);
// out = x w^T, bf16 operands.
GemmChoice bf16_gemm(const OpContext& ctx, const Tensor& x, const Tensor& w, Tensor& out,
                     const GemmChoice* forced);

// Elementwise ops on bf16 activations (cuda_elementwise.cpp), as Backend's.
void embedding(const OpContext& ctx, const Tensor& ids, const Tensor& table, Tensor& out);
void silu_mul(const OpContext& ctx, const Tensor& gate, const Tensor& up, Tensor& out);
void add(const OpContext& ctx, Tensor& a, const Tensor& b);

// MLA (cuda_attention.cpp), as Backend's; meta's tensors are device copies. An attention choice:
// the mla_attention variant (a name without its _split suffix) and how many programs share each
// token's context (flash-decoding); empty or 0: chosen from the shape.
struct MlaChoice {
  std::string variant;
  int splits = 0;
};
void mla_rope_cache_write(const OpContext& ctx, Tensor& q, const Tensor& kv, const MlaWeights& w,
                          const MlaParams& p, const RopeTable& rope, const AttentionMeta& meta,
                          KvLayer& cache);
// Returns the variant and split it used.
MlaChoice mla_attention(const OpContext& ctx, const Tensor& q, const MlaWeights& w,
                        const MlaParams& p, const AttentionMeta& meta, const KvLayer& cache,
                        Tensor& out, const MlaChoice* forced);


// MoE (cuda_moe.cpp), as Backend's moe_gate and moe_experts. The grouped GEMMs read the expert
// weights through a device table of their addresses (kernels/moe_gemm.py), so the weights stay
// one tensor per expert as the loader uploaded them. An ExpertTables entry (the table, the global
// to local expert map) is built on the first use of a set of experts and kept; a set is known by
// its addresses and map, so weights loaded anew get a new entry.
class ExpertTables {
 public:
  struct Entry {
    Tensor weights;          // i64 [local experts, 6]: gate, its scales, up, scales, down, scales
    Tensor global_to_local;  // i32 [global experts]
    int n_local = 0;
    bool fp8 = false;
    int64_t hidden = 0, intermediate = 0;
  };
  // Checks the experts (one dtype and shape for all, on this GPU, 16-byte aligned) on first use.
  const Entry& get(const OpContext& ctx, const ExpertWeights& experts);

 private:
  struct Cached {
    std::vector<int64_t> key;
    Entry entry;
  };
  std::unordered_map<int64_t, Cached> cache_;  // by the first gate weight's address
};

// The grouped GEMM variants moe_experts ran, as "kernel/variant" (moe_gate_up/fp8_m64n128_w8s3,
// moe_down_ws/fp8_m128n128_w4s4); empty when forcing: chosen from the shape.
struct MoeChoice {
  std::string gate_up, down;
};

void moe_gate(const OpContext& ctx, const Tensor& logits, const Tensor& bias, const GateParams& p,
              Tensor& topk_ids, Tensor& topk_weights);
MoeChoice moe_experts(const OpContext& ctx, ExpertTables& tables, const Tensor& x,
                      const Tensor& topk_ids, const Tensor& topk_weights,
                      const ExpertWeights& experts, Tensor& out, const MoeChoice* forced);

// The steps of moe_experts, for benchmarks. The route: the step's (token, slot) pairs sorted by
// local expert, expert e owning rows [offsets[e], offsets[e + 1]) (kernels/moe_route.py).
struct MoeRoute {
  int64_t tokens = 0, top_k = 0, pairs = 0;
  int n_local = 0;
  int64_t map_tiles = 0;  // tiles in the warp-specialized GEMMs' map
  Tensor offsets;         // i32 [n_local + 1]
  Tensor tile_map;        // i32 [2, map_tiles]
  Tensor sorted_pairs;    // i32 [pairs]: row -> pair
  Tensor pair_rows;       // i32 [pairs]: pair -> row, -1 when computed elsewhere
};
MoeRoute moe_route(const OpContext& ctx, const Tensor& topk_ids, const ExpertTables::Entry& e);
// a[row] = x[token of row]; FP8 experts: quantized per 128 columns, scales into a_scales.
void moe_permute(const OpContext& ctx, const MoeRoute& route, const ExpertTables::Entry& e,
                 const Tensor& x, Tensor& a, Tensor& a_scales);
// h = silu(a W_gate^T) * (a W_up^T) per expert (FP8: quantized), y = h W_down^T; forced: a
// "kernel/variant" or empty. Each returns the "kernel/variant" it ran.
std::string moe_gate_up(const OpContext& ctx, const MoeRoute& route, const ExpertTables::Entry& e,
                        const Tensor& a, const Tensor& a_scales, Tensor& h, Tensor& h_scales,
                        const std::string& forced);
std::string moe_down(const OpContext& ctx, const MoeRoute& route, const ExpertTables::Entry& e,
                     const Tensor& h, const Tensor& h_scales, Tensor& y, const std::string& forced);
// out[t] = sum over t's slots computed here of topk_weights[t, j] * y[row of (t, j)].
void moe_combine(const OpContext& ctx, const MoeRoute& route, const Tensor& y,
                 const Tensor& topk_weights, Tensor& out);

// Expert load (cuda_expert_counts.cpp), as Backend's add_expert_counts.
void add_expert_counts(const OpContext& ctx, const Tensor& topk_ids, Tensor& counts);

// Sampling (cuda_sampling.cpp), each row by its parameters (backend.h).
using SampleRow = trident::SampleRow;
// ids[b] = the token drawn from logits row b ([B, V], f32 or bf16), ids i32 [B].
void sample_tokens(const OpContext& ctx, const Tensor& logits, std::span<const SampleRow> rows,
                   Tensor& ids);

}  // namespace trident::cuda
