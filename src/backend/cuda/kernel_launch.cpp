#include "backend/cuda/kernel_launch.h"

#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

// Variants by kernel name, in table order.
const std::unordered_map<std::string, std::vector<const KernelVariant*>>& variants_by_kernel() {
  static const auto index = [] {
    std::unordered_map<std::string, std::vector<const KernelVariant*>> m;
    for (const KernelVariant& v : compiled_kernel_variants()) m[v.kernel].push_back(&v);
    return m;
  }();
  return index;
}

const std::vector<const KernelVariant*>& variants_of(std::string_view kernel) {
  const auto& index = variants_by_kernel();
  auto it = index.find(std::string(kernel));
  TRI_CHECK(it != index.end(), "no compiled kernel named {}; the build has {} kernels", kernel,
            index.size());
  return it->second;
}

bool sync_after_each_launch() {
  static const bool on = [] {
    const char* v = std::getenv("TRIDENT_CUDA_SYNC");
    return v != nullptr && std::string_view(v) == "1";
  }();
  return on;
}

}  // namespace

int KernelVariant::tag(std::string_view key) const {
  for (int i = 0; i < n_tags; ++i)
    if (key == tags[i].key) return tags[i].value;
  fail("kernel {} has no tag {}", label(), key);
}

bool KernelVariant::matches(std::initializer_list<std::pair<std::string_view, int>> wanted) const {
  for (const auto& [key, value] : wanted) {
    bool found = false;
    for (int i = 0; i < n_tags && !found; ++i) found = key == tags[i].key && value == tags[i].value;
    if (!found) return false;
  }
  return true;
}

std::string KernelVariant::label() const {
  return fmt::format("{}/{} (sm_{})", kernel, name, arch);
}

const KernelVariant& find_variant(std::string_view kernel, int arch, std::string_view name) {
  std::string known;
  for (const KernelVariant* v : variants_of(kernel)) {
    if (v->arch != arch) continue;
    if (name == v->name) return *v;
    known += fmt::format(" {}", v->name);
  }
  fail("kernel {} has no variant {} for sm_{}; compiled:{}", kernel, name, arch,
       known.empty() ? " none for this arch" : known);
}

const KernelVariant& select_variant(
    std::string_view kernel, int arch,
    std::initializer_list<std::pair<std::string_view, int>> wanted) {
  for (const KernelVariant* v : variants_of(kernel))
    if (v->arch == arch && v->matches(wanted)) return *v;
  std::string want;
  for (const auto& [key, value] : wanted) want += fmt::format(" {}={}", key, value);
  fail("kernel {} has no variant for sm_{} with{}; add one in kernels/{}.py", kernel, arch, want,
       kernel);
}

const char* tuned_variant(std::string_view kernel, int arch, int64_t m) {
  for (const TunedChoice& c : tuned_kernel_choices())
    if (c.arch == arch && kernel == c.kernel && (c.max_m < 0 || m <= c.max_m)) return c.variant;
  return nullptr;
}

void check_kernel(const KernelVariant& variant, const char* kernel) {
  TRI_CHECK(std::string_view(variant.kernel) == kernel,
            "variant {} passed to the launch wrapper of kernel {}", variant.label(), kernel);
}

void check_divisible(const KernelVariant& variant, int arg_index, const char* arg_name,
                     int64_t value) {
  if ((variant.divisible_by_16 >> arg_index & 1u) && value % 16 != 0) {
    fail(
        "kernel {} assumes {} is a multiple of 16{}, got {}: choose a variant without that "
        "assumption",
        variant.label(), arg_name, std::string_view(arg_name).ends_with("_ptr") ? " (aligned)" : "",
        value);
  }
}

void launch_kernel(const Launch& launch, const KernelVariant& variant, void** args, int n_args) {
  DeviceContext& device = launch.device;
  const uint64_t programs = uint64_t(launch.grid[0]) * launch.grid[1] * launch.grid[2];
  if (programs == 0) return;
  TRI_CHECK(launch.grid[1] <= 65535 && launch.grid[2] <= 65535 &&
                uint64_t(launch.grid[0]) * variant.num_ctas <= 0x7fffffffu,
            "grid ({}, {}, {}) of kernel {} exceeds CUDA's limits", launch.grid[0], launch.grid[1],
            launch.grid[2], variant.label());
  CUfunction fn = device.function(variant);

  // Scratch the compiler asked for (device-side tensor descriptors, profiling): one slice per
  // program, freed in stream order once the kernel is done with it.
  CUdeviceptr global_scratch = 0, profile_scratch = 0;
  const uint64_t slices = programs * variant.num_ctas;
  if (variant.global_scratch_bytes > 0) {
    TRI_CHECK(variant.global_scratch_align <= 256, "kernel {} wants {}-byte aligned scratch",
              variant.label(), variant.global_scratch_align);
    global_scratch = device.allocate(slices * variant.global_scratch_bytes);
  }
  if (variant.profile_scratch_bytes > 0) {
    profile_scratch = device.allocate(slices * variant.profile_scratch_bytes);
  }
  args[n_args] = &global_scratch;
  args[n_args + 1] = &profile_scratch;

  CUlaunchConfig config{};
  config.gridDimX = launch.grid[0] * variant.num_ctas;
  config.gridDimY = launch.grid[1];
  config.gridDimZ = launch.grid[2];
  config.blockDimX = 32 * variant.num_warps;
  config.blockDimY = 1;
  config.blockDimZ = 1;
  config.sharedMemBytes = variant.shared_bytes;
  config.hStream = launch.stream;
  CUlaunchAttribute cluster{};
  if (variant.num_ctas > 1) {
    cluster.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    cluster.value.clusterDim.x = variant.num_ctas;
    cluster.value.clusterDim.y = 1;
    cluster.value.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = 1;
  }
  CUresult r = cu().cuLaunchKernelEx(&config, fn, args, nullptr);
  device.release(global_scratch);
  device.release(profile_scratch);
  check(r, fmt::format("launching kernel {} on grid ({}, {}, {})", variant.label(), launch.grid[0],
                       launch.grid[1], launch.grid[2]));
  // A capture records the launch without running it; there is nothing to wait for.
  if (sync_after_each_launch() && !device.capturing()) {
    check(cu().cuStreamSynchronize(launch.stream),
          fmt::format("running kernel {} on grid ({}, {}, {})", variant.label(), launch.grid[0],
                      launch.grid[1], launch.grid[2]));
  }
}

}  // namespace trident::cuda
