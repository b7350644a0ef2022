// Tensor: a typed, contiguous, row-major view of memory on one device, up to 4 dimensions.
// A tensor may own its memory (through `owner`) or borrow it (a mapped checkpoint, a slice of a
// workspace). Copies share memory; nothing here allocates on a device.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace trident {

enum class Device : uint8_t { CPU, CUDA };

struct Tensor {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  Device device = Device::CPU;
  int device_index = 0;
  std::shared_ptr<void> owner;

  Tensor() = default;
  Tensor(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = Device::CPU,
         int device_index = 0);

  bool defined() const { return ndim > 0; }
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  // dim(-1) is the last dimension.
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  // Elements in one row: the product of all dimensions after the first.
  int64_t row_size() const;

  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // Same memory, new shape with the same element count.
  Tensor reshape(std::initializer_list<int64_t> new_shape) const;
  // Rows [begin, end) of dimension 0.
  Tensor rows(int64_t begin, int64_t end) const;

  std::string shape_str() const;  // "[576, 7168]"
};

// A new zero-filled CPU tensor that owns its memory.
Tensor cpu_tensor(DType dtype, std::initializer_list<int64_t> shape);

// Reads element i of a CPU tensor of any float dtype as f32.
float load_f32(const Tensor& t, int64_t i);

}  // namespace trident
