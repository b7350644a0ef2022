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

}  // namespace trident::cuda
