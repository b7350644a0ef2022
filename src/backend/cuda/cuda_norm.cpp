// RMSNorm, with or without the residual add fused in (kernels/rms_norm.py).
#include <cstdint>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

namespace {
constexpr int kSinglePassBlocks[] = {512, 1024, 2048, 4096, 8192};
constexpr int kLoopBlock = 4096;
constexpr int kUnalignedBlock = 1024;

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }
}  // namespace

void rms_norm(const OpContext& ctx, const Tensor& x, Tensor* residual, const Tensor& w, float eps,
              Tensor& out) {
  const char* op = residual ? "add_rms_norm" : "rms_norm";
  expect_device_tensor(ctx, x, op, "x", {DType::BF16});
  expect_device_tensor(ctx, w, op, "w", {DType::BF16, DType::F32});
  expect_device_tensor(ctx, out, op, "out", {DType::BF16});
  const int64_t rows = x.dim(0), n = x.row_size();
  TRI_CHECK(w.numel() == n, "{}: weight has {} elements, rows have {}", op, w.numel(), n);
  TRI_CHECK(out.dim(0) == rows && out.row_size() == n, "{}: out {} does not match x {}", op,
            out.shape_str(), x.shape_str());
  if (residual) {
    expect_device_tensor(ctx, *residual, op, "residual", {DType::BF16});
    TRI_CHECK(residual->dim(0) == rows && residual->row_size() == n,
              "{}: residual {} does not match x {}", op, residual->shape_str(), x.shape_str());
  }
  TRI_CHECK(n < (int64_t(1) << 31), "{}: rows of {} elements are too long", op, n);
  if (rows == 0) return;

  const bool aligned = n % 16 == 0 && aligned16(x) && aligned16(w) && aligned16(out) &&
                       (!residual || aligned16(*residual));
  int block = aligned ? kLoopBlock : kUnalignedBlock;
  bool single_pass = false;
  if (aligned) {
    for (int b : kSinglePassBlocks) {
      if (n <= b) {
        block = b;
        single_pass = true;
        break;
      }
    }
  }
  const KernelVariant& variant =
      select_variant("rms_norm", ctx.device.arch(),
                     {{"HAS_RESIDUAL", residual ? 1 : 0},
                      {"W", int(w.dtype == DType::F32 ? KernelDType::F32 : KernelDType::BF16)},
                      {"BLOCK", block},
                      {"SINGLE_PASS", single_pass ? 1 : 0},
                      {"ALIGNED", aligned ? 1 : 0}});
  const CUdeviceptr res = residual ? device_ptr(*residual) : device_ptr(x);
  kernels::rms_norm({ctx.device, ctx.stream, {unsigned(rows), 1, 1}}, variant, device_ptr(x), res,
                    device_ptr(w), device_ptr(out), int32_t(n), eps);
}

}  // namespace trident::cuda
