// Expert load on the GPU (kernels/expert_counts.py): the tokens the gate gave each expert, added
// into a device counter with atomics, so no step waits for the host and a graph can hold the op.
#include <cstdint>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

void add_expert_counts(const OpContext& ctx, const Tensor& topk_ids, Tensor& counts) {
  if (!topk_ids.defined() || topk_ids.numel() == 0) return;
  expect_device_tensor(ctx, topk_ids, "add_expert_counts", "topk_ids", {DType::I32});
  expect_device_tensor(ctx, counts, "add_expert_counts", "counts", {DType::I64});
  const int64_t n = topk_ids.numel(), experts = counts.numel();
  TRI_CHECK(experts > 0 && experts < (int64_t(1) << 31),
            "add_expert_counts: counts {} must hold between 1 and 2^31 experts",
            counts.shape_str());
  const KernelVariant& variant = select_variant("add_expert_counts", ctx.device.arch(), {});
  const int64_t block = variant.tag("BLOCK");
  const int64_t programs = (n + block - 1) / block;
  TRI_CHECK(programs < (int64_t(1) << 31), "add_expert_counts: {} ids are too many for one launch",
            n);
  kernels::add_expert_counts({ctx.device, ctx.stream, {unsigned(programs), 1, 1}}, variant,
                             device_ptr(topk_ids), device_ptr(counts), n, int32_t(experts));
}

}  // namespace trident::cuda
