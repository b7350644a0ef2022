// Device tensors: allocation and the checks every op makes on its arguments.
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace trident::cuda {

CUdeviceptr device_ptr(const Tensor& t) { return CUdeviceptr(reinterpret_cast<uintptr_t>(t.data)); }

Tensor device_tensor(DeviceContext& device, DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape, Device::CUDA, device.ordinal());
  CUdeviceptr ptr = device.allocate(t.nbytes());
  t.data = reinterpret_cast<void*>(uintptr_t(ptr));
  DeviceContext* owner = &device;
  t.owner = std::shared_ptr<void>(
      t.data, [owner](void* p) { owner->release(CUdeviceptr(reinterpret_cast<uintptr_t>(p))); });
  return t;
}

void expect_device_tensor(const OpContext& ctx, const Tensor& t, const char* op, const char* arg,
                          std::initializer_list<DType> dtypes) {
  TRI_CHECK(t.defined(), "{}: {} is undefined", op, arg);
  if (t.device != Device::CUDA || t.device_index != ctx.device.ordinal()) {
    const std::string where = t.device == Device::CUDA
                                  ? fmt::format("CUDA device {}", t.device_index)
                                  : std::string("the CPU");
    fail("{}: {} {} is on {}, the op runs on CUDA device {}; upload it first", op, arg,
         t.shape_str(), where, ctx.device.ordinal());
  }
  bool ok = false;
  std::string names;
  for (DType d : dtypes) {
    ok |= t.dtype == d;
    names += fmt::format("{}{}", names.empty() ? "" : " or ", dtype_name(d));
  }
  TRI_CHECK(ok, "{}: {} {} is {}, the CUDA op takes {}", op, arg, t.shape_str(),
            dtype_name(t.dtype), names);
}

}  // namespace trident::cuda
