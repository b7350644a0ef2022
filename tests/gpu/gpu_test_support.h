// Support for the CUDA op tests: every op runs on fresh random inputs (the seed is printed on
// failure), into outputs poisoned with NaN, and is compared with the CPU backend by dtype-aware
// error bounds.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace trident::gpu_test {

// One CUDA backend on device 0 and one CPU backend for the whole test binary.
cuda::CudaBackend& gpu();
Backend& cpu();

// A generator seeded fresh for each test; SCOPED_TRACE(seed_note()) reports the seed.
std::mt19937_64& rng();
std::string seed_note();

// Host tensors of random values: normal(0, stddev) in the given float dtype.
Tensor random_host(DType dtype, std::initializer_list<int64_t> shape, float stddev = 1.0f);
// A random FP8 weight [N, K] quantized per 128x128 block as DeepSeek's checkpoints are.
LinearWeight random_fp8_weight(int64_t n, int64_t k, float stddev = 0.05f);

// A device tensor filled with 0xff bytes: NaN in bf16, f32 and e4m3, so an element the op does
// not write shows up in the comparison.
Tensor poisoned(DType dtype, std::initializer_list<int64_t> shape);
// A host copy of a device tensor, same dtype and shape.
Tensor download(const Tensor& device);

struct Diff {
  double rel_l2 = 0;  // ||got - want|| / ||want||
  double max_abs = 0;
  int64_t nan = 0;         // NaN in got where want is a number
  int64_t over_ulps = 0;   // elements further apart than `ulps` bf16 ulps of want
  int64_t first_bad = -1;  // index of the first NaN or over-ulps element
};
// got and want are host tensors of float dtypes with the same element count.
Diff compare(const Tensor& got, const Tensor& want, double ulps = 1.0);
std::string describe(const Diff& d);

}  // namespace trident::gpu_test
