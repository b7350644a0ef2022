// Kernels compiled ahead of time (kernels/aot_build.py) and how they are launched. The build
// generates the variant table and one typed wrapper per kernel (trident_kernels.h), which packs
// the arguments and calls launch_kernel; host code picks a variant, computes the grid, and calls
// the wrapper.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace trident::cuda {

class DeviceContext;

struct KernelTag {
  const char* key;
  int value;
};

// One compiled specialization of a Triton kernel for one GPU architecture, embedded in the library.
struct KernelVariant {
  const char* kernel;  // "fp8_gemm"
  const char* name;    // "m128n128_w8s4_bf16", unique within the kernel
  int arch;            // compute capability as major * 10 + minor: 90 for sm_90
  const char* entry;   // the function's name in the cubin
  const unsigned char* cubin;
  size_t cubin_size;
  int num_warps;
  int num_ctas;  // cluster size
  int shared_bytes;
  int global_scratch_bytes;  // per program; 0 when the kernel needs none
  int global_scratch_align;
  int profile_scratch_bytes;
  int profile_scratch_align;
  uint32_t divisible_by_16;  // bit i: run-time argument i assumed a multiple of 16
  const KernelTag* tags;     // what host code selects by: block sizes, flags, dtype codes
  int n_tags;

  // The value of tag `key`; fails if the variant has no such tag.
  int tag(std::string_view key) const;
  bool matches(std::initializer_list<std::pair<std::string_view, int>> wanted) const;
  // "fp8_gemm/m128n128_w8s4_bf16 (sm_90)", for messages.
  std::string label() const;
};

// Dtype codes in variant tags (kernels/variant.py DTYPE_CODES).
enum class KernelDType : int { F32 = 0, BF16 = 1, F16 = 2, F8E4M3 = 3 };

// A tuned tile choice: for `kernel` on `arch`, M up to max_m (-1: any M) uses the variant whose
// name is `variant` + "_" + output dtype. From kernels/tuned/sm<arch>.json.
struct TunedChoice {
  const char* kernel;
  int arch;
  int max_m;
  const char* variant;
};

// Defined in the generated trident_kernels.cpp.
std::span<const KernelVariant> compiled_kernel_variants();
std::span<const TunedChoice> tuned_kernel_choices();
std::span<const int> compiled_kernel_archs();

// The variant of `kernel` named `name` for `arch`; fails, listing what there is, if none.
const KernelVariant& find_variant(std::string_view kernel, int arch, std::string_view name);
// The first variant of `kernel` for `arch` whose tags include `wanted`; fails if none.
const KernelVariant& select_variant(std::string_view kernel, int arch,
                                    std::initializer_list<std::pair<std::string_view, int>> wanted);
// The tuned variant base name for M rows, or nullptr when the build has no table for this arch.
const char* tuned_variant(std::string_view kernel, int arch, int64_t m);

struct Launch {
  DeviceContext& device;
  CUstream stream;
  unsigned grid[3];
};

// Launches `variant`: blockDim = 32 x num_warps (x num_ctas in a cluster), dynamic shared memory
// from the variant, parameters `args[0..n_args)` followed by the global and profile scratch
// pointers (args must have room for both). Fails naming the variant and the CUresult. With
// TRIDENT_CUDA_SYNC=1 in the environment, also waits for the kernel and reports its errors.
void launch_kernel(const Launch& launch, const KernelVariant& variant, void** args, int n_args);

// Called by the generated wrappers.
void check_kernel(const KernelVariant& variant, const char* kernel);
void check_divisible(const KernelVariant& variant, int arg_index, const char* arg_name,
                     int64_t value);

}  // namespace trident::cuda
