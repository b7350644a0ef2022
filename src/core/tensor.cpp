#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace trident {

Tensor::Tensor(void* data_, DType dtype_, std::initializer_list<int64_t> shape_, Device device_,
               int device_index_)
    : data(data_), dtype(dtype_), device(device_), device_index(device_index_) {
  TRI_CHECK(shape_.size() <= size_t(kMaxDims), "tensor has {} dims, at most {} supported",
            shape_.size(), kMaxDims);
  ndim = int(shape_.size());
  int i = 0;
  for (int64_t s : shape_) shape[i++] = s;
}

int64_t Tensor::numel() const {
  if (ndim == 0) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

int64_t Tensor::row_size() const {
  int64_t n = 1;
  for (int i = 1; i < ndim; ++i) n *= shape[i];
  return n;
}

Tensor Tensor::reshape(std::initializer_list<int64_t> new_shape) const {
  Tensor t = *this;
  TRI_CHECK(new_shape.size() <= size_t(kMaxDims), "reshape to {} dims", new_shape.size());
  t.ndim = int(new_shape.size());
  int i = 0;
  for (int64_t s : new_shape) t.shape[i++] = s;
  TRI_CHECK(t.numel() == numel(), "reshape {} to {} changes the element count", shape_str(),
            t.shape_str());
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  TRI_CHECK(ndim >= 1 && 0 <= begin && begin <= end && end <= shape[0],
            "rows [{}, {}) out of range for {}", begin, end, shape_str());
  Tensor t = *this;
  t.shape[0] = end - begin;
  t.data = static_cast<char*>(data) + size_t(begin * row_size()) * dtype_size(dtype);
  return t;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor cpu_tensor(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape);
  size_t bytes = std::max<size_t>(t.nbytes(), 1);
  // 64-byte alignment keeps vector loads aligned for every dtype.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  TRI_CHECK(p != nullptr, "out of host memory allocating {} bytes", bytes);
  std::memset(p, 0, bytes);
  t.data = p;
  t.owner = std::shared_ptr<void>(p, std::free);
  return t;
}

float load_f32(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32: return t.ptr<float>()[i];
    case DType::BF16: return bf16_to_f32(t.ptr<uint16_t>()[i]);
    case DType::F16: return f16_to_f32(t.ptr<uint16_t>()[i]);
    case DType::F8E4M3: return fp8e4m3_to_f32(t.ptr<uint8_t>()[i]);
    default: fail("load_f32: tensor of dtype {} is not a float type", dtype_name(t.dtype));
  }
}

}  // namespace trident
