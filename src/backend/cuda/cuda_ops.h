// The CUDA ops behind CudaBackend: argument checks, variant choice, grids and launches.
#pragma once

#include <cuda.h>

#include <string>

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

}  // namespace trident::cuda
