// The launcher and the device plumbing: every embedded kernel loads, the launch wrappers enforce
// their variants' assumptions, errors name what failed, and each visible GPU runs ops.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_context.h"
#include "backend/cuda/trident_kernels.h"
#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaLauncher, EveryCompiledVariantLoadsOnThisGpu) {
  cuda::DeviceContext& device = gpu().context();
  int loaded = 0;
  for (const cuda::KernelVariant& v : cuda::compiled_kernel_variants()) {
    if (v.arch != device.arch()) continue;
    EXPECT_NO_THROW(device.function(v)) << v.label();
    ++loaded;
  }
  EXPECT_GT(loaded, 0) << "no kernels compiled for sm_" << device.arch();
}

TEST(CudaLauncher, RefusesAMisalignedPointerForAnAlignedVariant) {
  const cuda::KernelVariant& aligned =
      cuda::select_variant("act_quant", gpu().context().arch(), {{"ALIGNED", 1}});
  Tensor x = gpu().alloc(DType::BF16, {1, 256});
  Tensor q = gpu().alloc(DType::F8E4M3, {1, 256});
  Tensor s = gpu().alloc(DType::F32, {1, 2});
  const std::string msg = error_of([&] {
    cuda::kernels::act_quant({gpu().context(), gpu().context().stream(), {1, 1, 1}}, aligned,
                             cuda::device_ptr(x) + 2, cuda::device_ptr(q), cuda::device_ptr(s), 1,
                             254);
  });
  EXPECT_NE(msg.find("act_quant/"), std::string::npos) << msg;
  EXPECT_NE(msg.find("multiple of 16"), std::string::npos) << msg;
}

TEST(CudaLauncher, OddShapesTakeTheUnalignedVariants) {
  // A row of 9 bf16 values starting 18 bytes in: only the any-alignment kernels may touch it.
  SCOPED_TRACE(seed_note());
  Tensor x = random_host(DType::BF16, {3, 9});
  Tensor w = random_host(DType::BF16, {9});
  Tensor want = cpu_tensor(DType::BF16, {2, 9});
  cpu().rms_norm(x.rows(1, 3), w, 1e-6f, want);
  Tensor xd = gpu().upload(x);
  Tensor out = poisoned(DType::BF16, {2, 9});
  gpu().rms_norm(xd.rows(1, 3), gpu().upload(w), 1e-6f, out);
  const Diff d = compare(download(out), want);
  EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
}

TEST(CudaTestSupport, PoisonedOutputsCountAsUnwritten) {
  // What makes every op test catch an element the kernel did not write.
  Tensor want = cpu_tensor(DType::F32, {4, 32});
  for (DType dtype : {DType::BF16, DType::F32}) {
    const Diff d = compare(download(poisoned(dtype, {4, 32})), want);
    EXPECT_EQ(d.nan, 4 * 32) << dtype_name(dtype);
  }
}

TEST(CudaLauncher, DriverErrorsNameTheCallAndTheResult) {
  const std::string msg =
      error_of([] { cuda::check(CUDA_ERROR_OUT_OF_MEMORY, "allocating the KV pool"); });
  EXPECT_NE(msg.find("allocating the KV pool"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CUDA_ERROR_OUT_OF_MEMORY"), std::string::npos) << msg;
}

TEST(CudaBackendOps, RefuseHostTensors) {
  Tensor x = random_host(DType::BF16, {2, 64});
  Tensor w = gpu().upload(random_host(DType::BF16, {64}));
  Tensor out = gpu().alloc(DType::BF16, {2, 64});
  const std::string msg = error_of([&] { gpu().rms_norm(x, w, 1e-6f, out); });
  EXPECT_NE(msg.find("upload it first"), std::string::npos) << msg;
}

TEST(CudaBackendOps, UploadAndDownloadRoundTrip) {
  Tensor x = random_host(DType::F32, {3, 5, 7});
  Tensor back = download(gpu().upload(x));
  ASSERT_EQ(back.shape_str(), x.shape_str());
  EXPECT_EQ(std::memcmp(back.data, x.data, x.nbytes()), 0);
}

TEST(CudaBackendOps, RunOnEveryVisibleGpuFromOneProcess) {
  SCOPED_TRACE(seed_note());
  const int count = cuda::DeviceContext::device_count();
  Tensor x = random_host(DType::BF16, {4, 7168});
  Tensor w = random_host(DType::BF16, {7168});
  Tensor want = cpu_tensor(DType::BF16, {4, 7168});
  cpu().rms_norm(x, w, 1e-6f, want);
  for (int device = 0; device < count; ++device) {
    SCOPED_TRACE(fmt::format("CUDA device {} of {}", device, count));
    cuda::CudaBackend backend(device);
    Tensor out = backend.alloc(DType::BF16, {4, 7168});
    backend.rms_norm(backend.upload(x), backend.upload(w), 1e-6f, out);
    Tensor got = cpu_tensor(DType::BF16, {4, 7168});
    backend.to_host(out, got.data);
    const Diff d = compare(got, want);
    EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
  }
}

}  // namespace
}  // namespace trident::gpu_test
