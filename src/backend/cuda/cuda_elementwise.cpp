// Embedding rows, SiLU-mul and the in-place add on bf16 activations (kernels/elementwise.py).
#include <cstdint>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Programs for `numel` elements, BLOCK each; fails past the grid's first dimension.
unsigned element_programs(const char* op, int64_t numel, int block) {
  const int64_t programs = ceil_div(numel, block);
  TRI_CHECK(programs < (int64_t(1) << 31), "{}: {} elements are too many for one launch", op,
            numel);
  return unsigned(programs);
}

void expect_same_shape(const char* op, const Tensor& a, const char* a_name, const Tensor& b,
                       const char* b_name) {
  TRI_CHECK(a.numel() == b.numel() && a.dim(0) == b.dim(0), "{}: {} {} and {} {} differ in shape",
            op, a_name, a.shape_str(), b_name, b.shape_str());
}

}  // namespace

void embedding(const OpContext& ctx, const Tensor& ids, const Tensor& table, Tensor& out) {
  expect_device_tensor(ctx, ids, "embedding", "ids", {DType::I32});
  expect_device_tensor(ctx, table, "embedding", "table", {DType::BF16, DType::F32});
  expect_device_tensor(ctx, out, "embedding", "out", {DType::BF16});
  const int64_t n = ids.numel(), width = table.row_size(), vocab = table.dim(0);
  TRI_CHECK(out.dim(0) == n && out.row_size() == width,
            "embedding: out {} does not fit {} ids of width {}", out.shape_str(), n, width);
  TRI_CHECK(vocab < (int64_t(1) << 31) && width < (int64_t(1) << 31) && n < (int64_t(1) << 31),
            "embedding: table {} or {} ids exceed 32-bit sizes", table.shape_str(), n);
  if (n == 0 || width == 0) return;
  const bool aligned = width % 16 == 0 && aligned16(table) && aligned16(out);
  const KernelVariant& variant = select_variant(
      "embedding_rows", ctx.device.arch(),
      {{"TABLE", int(table.dtype == DType::F32 ? KernelDType::F32 : KernelDType::BF16)},
       {"ALIGNED", aligned ? 1 : 0}});
  const int64_t column_blocks = ceil_div(width, variant.tag("BLOCK"));
  TRI_CHECK(column_blocks < 65536, "embedding: rows of {} columns are too wide", width);
  kernels::embedding_rows({ctx.device, ctx.stream, {unsigned(n), unsigned(column_blocks), 1}},
                          variant, device_ptr(ids), device_ptr(table), device_ptr(out),
                          int32_t(width), int32_t(vocab));
}

void silu_mul(const OpContext& ctx, const Tensor& gate, const Tensor& up, Tensor& out) {
  expect_device_tensor(ctx, gate, "silu_mul", "gate", {DType::BF16});
  expect_device_tensor(ctx, up, "silu_mul", "up", {DType::BF16});
  expect_device_tensor(ctx, out, "silu_mul", "out", {DType::BF16});
  expect_same_shape("silu_mul", gate, "gate", up, "up");
  expect_same_shape("silu_mul", gate, "gate", out, "out");
  const int64_t numel = gate.numel();
  if (numel == 0) return;
  const bool aligned = numel % 16 == 0 && aligned16(gate) && aligned16(up) && aligned16(out);
  const KernelVariant& variant =
      select_variant("silu_mul", ctx.device.arch(), {{"ALIGNED", aligned ? 1 : 0}});
  kernels::silu_mul(
      {ctx.device, ctx.stream, {element_programs("silu_mul", numel, variant.tag("BLOCK")), 1, 1}},
      variant, device_ptr(gate), device_ptr(up), device_ptr(out), numel);
}

void add(const OpContext& ctx, Tensor& a, const Tensor& b) {
  expect_device_tensor(ctx, a, "add", "a", {DType::BF16});
  expect_device_tensor(ctx, b, "add", "b", {DType::BF16});
  expect_same_shape("add", a, "a", b, "b");
  const int64_t numel = a.numel();
  if (numel == 0) return;
  const bool aligned = numel % 16 == 0 && aligned16(a) && aligned16(b);
  const KernelVariant& variant =
      select_variant("add", ctx.device.arch(), {{"ALIGNED", aligned ? 1 : 0}});
  kernels::add({ctx.device, ctx.stream, {element_programs("add", numel, variant.tag("BLOCK")), 1, 1}},
               variant, device_ptr(a), device_ptr(b), numel);
}

}  // namespace trident::cuda
