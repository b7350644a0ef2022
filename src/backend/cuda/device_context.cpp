#include "backend/cuda/device_context.h"

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "core/error.h"

namespace trident::cuda {

namespace {
constexpr int kDefaultSharedLimit = 48 * 1024;
}

int DeviceContext::device_count() {
  int count = 0;
  check(cu().cuDeviceGetCount(&count), "counting CUDA devices");
  return count;
}

DeviceContext& DeviceContext::get(int ordinal) {
  static std::mutex mutex;
  // Never destroyed: tensors freed during exit still release into a live context.
  static auto* contexts = new std::vector<std::unique_ptr<DeviceContext>>();
  std::lock_guard lock(mutex);
  const int count = device_count();
  TRI_CHECK(ordinal >= 0 && ordinal < count,
            "CUDA device {} does not exist: this process sees {} (check CUDA_VISIBLE_DEVICES)",
            ordinal, count);
  if (contexts->size() < size_t(count)) contexts->resize(count);
  auto& slot = (*contexts)[ordinal];
  if (!slot) slot.reset(new DeviceContext(ordinal));
  return *slot;
}

DeviceContext::DeviceContext(int ordinal) : ordinal_(ordinal) {
  const DriverApi& api = cu();
  const std::string where = fmt::format("CUDA device {}", ordinal);
  check(api.cuDeviceGet(&device_, ordinal), "getting " + where);
  char name[256] = {};
  check(api.cuDeviceGetName(name, sizeof(name), device_), "naming " + where);
  name_ = name;
  int major = 0, minor = 0;
  check(api.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device_),
        "reading the compute capability of " + where);
  check(api.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device_),
        "reading the compute capability of " + where);
  arch_ = major * 10 + minor;
  check(api.cuDeviceGetAttribute(&sm_count_, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device_),
        "reading the multiprocessor count of " + where);
  check(api.cuDeviceGetAttribute(&max_shared_per_block_,
                                 CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device_),
        "reading the shared memory limit of " + where);

  bool compiled_for_arch = false;
  std::string archs;
  for (int a : compiled_kernel_archs()) {
    compiled_for_arch |= a == arch_;
    archs += fmt::format("{}sm_{}", archs.empty() ? "" : ", ", a);
  }
  TRI_CHECK(compiled_for_arch,
            "{} ({}) is sm_{}, but the kernels were compiled for {}: rebuild with "
            "-DTRIDENT_CUDA_ARCHS=\"...;{}\"",
            where, name_, arch_, archs, arch_);

  check(api.cuDevicePrimaryCtxRetain(&context_, device_), "retaining the context of " + where);
  make_current();
  check(api.cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING), "creating a stream on " + where);
  // Keep freed memory in the pool instead of returning it to the driver at every
  // synchronization: allocations then cost no driver round trip after warm-up.
  check(api.cuDeviceGetDefaultMemPool(&pool_, device_), "getting the memory pool of " + where);
  cuuint64_t keep_all = UINT64_MAX;
  check(api.cuMemPoolSetAttribute(pool_, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all),
        "setting the memory pool release threshold of " + where);
}

void DeviceContext::make_current() const {
  check(cu().cuCtxSetCurrent(context_), fmt::format("making CUDA device {} current", ordinal_));
}

CUfunction DeviceContext::function(const KernelVariant& variant) {
  std::lock_guard lock(mutex_);
  auto it = functions_.find(&variant);
  if (it != functions_.end()) return it->second;

  TRI_CHECK(variant.arch == arch_, "kernel {} was compiled for sm_{}, CUDA device {} is sm_{}",
            variant.label(), variant.arch, ordinal_, arch_);
  TRI_CHECK(variant.shared_bytes <= max_shared_per_block_,
            "kernel {} needs {} bytes of shared memory, CUDA device {} ({}) allows {} per block",
            variant.label(), variant.shared_bytes, ordinal_, name_, max_shared_per_block_);
  const DriverApi& api = cu();
  make_current();
  CUmodule module{};
  CUfunction fn{};
  check(api.cuModuleLoadData(&module, variant.cubin),
        fmt::format("loading kernel {} on CUDA device {}", variant.label(), ordinal_));
  check(api.cuModuleGetFunction(&fn, module, variant.entry),
        fmt::format("finding entry point {} of kernel {}", variant.entry, variant.label()));
  if (variant.shared_bytes > kDefaultSharedLimit) {
    check(api.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                 variant.shared_bytes),
          fmt::format("allowing {} bytes of shared memory for kernel {}", variant.shared_bytes,
                      variant.label()));
  }
  int max_threads = 0;
  check(api.cuFuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn),
        fmt::format("reading the thread limit of kernel {}", variant.label()));
  TRI_CHECK(32 * variant.num_warps <= max_threads,
            "kernel {} runs {} warps, but its registers allow only {} threads per block",
            variant.label(), variant.num_warps, max_threads);
  functions_.emplace(&variant, fn);
  return fn;
}

CUdeviceptr DeviceContext::allocate(size_t bytes) {
  CUdeviceptr ptr = 0;
  if (bytes == 0) return 0;
  if (const int workspace = capturing_; workspace >= 0) {
    std::lock_guard lock(workspace_mutex_);
    RegionAllocator& region = graph_workspaces_.at(workspace);
    ptr = CUdeviceptr(region.allocate(bytes));
    TRI_CHECK(ptr != 0,
              "capturing a CUDA graph on device {}: {} bytes do not fit in the graph workspace "
              "({} bytes, {} in use, largest free range {}); the workspace is sized by a trial "
              "step, so this capture needs more than that step did",
              ordinal_, bytes, region.size(), region.in_use(), region.largest_free());
    return ptr;
  }
  CUresult r = cu().cuMemAllocAsync(&ptr, bytes, stream_);
  if (r != CUDA_SUCCESS) {
    size_t free_bytes = 0, total_bytes = 0;
    cu().cuMemGetInfo(&free_bytes, &total_bytes);
    fail("allocating {} bytes on CUDA device {} ({}) failed: {}; {} of {} bytes free", bytes,
         ordinal_, name_, describe(r), free_bytes, total_bytes);
  }
  return ptr;
}

void DeviceContext::release(CUdeviceptr ptr) noexcept {
  if (ptr == 0) return;
  {
    std::lock_guard lock(workspace_mutex_);
    for (auto& [id, region] : graph_workspaces_) {
      if (region.contains(uint64_t(ptr))) {
        region.release(uint64_t(ptr));
        return;
      }
    }
  }
  // Errors here mean the process is tearing the driver down; nothing useful can be done.
  cu().cuMemFreeAsync(ptr, stream_);
}

int DeviceContext::add_graph_workspace(CUdeviceptr base, size_t bytes) {
  std::lock_guard lock(workspace_mutex_);
  TRI_CHECK(base % RegionAllocator::kAlignment == 0 && bytes > 0,
            "CUDA device {}: a graph workspace of {} bytes at {:#x} (must be {}-byte aligned)",
            ordinal_, bytes, uint64_t(base), RegionAllocator::kAlignment);
  const int id = next_workspace_++;
  graph_workspaces_.emplace(id, RegionAllocator(uint64_t(base), bytes));
  return id;
}

void DeviceContext::remove_graph_workspace(int id) {
  std::lock_guard lock(workspace_mutex_);
  auto it = graph_workspaces_.find(id);
  if (it == graph_workspaces_.end()) return;
  TRI_CHECK(it->second.in_use() == 0,
            "CUDA device {}: a graph workspace is given up while {} bytes of it are in use (a "
            "graph's tensors outlive it)",
            ordinal_, it->second.in_use());
  graph_workspaces_.erase(it);
}

void DeviceContext::begin_capture(int workspace) {
  std::lock_guard lock(workspace_mutex_);
  TRI_CHECK(graph_workspaces_.count(workspace) == 1,
            "CUDA device {}: capturing a graph needs a graph workspace (reserve_graph_workspace)",
            ordinal_);
  int idle = -1;
  TRI_CHECK(capturing_.compare_exchange_strong(idle, workspace),
            "CUDA device {}: a graph capture is already under way", ordinal_);
}

void DeviceContext::end_capture() { capturing_ = -1; }

size_t DeviceContext::graph_workspace_high_water(int workspace) {
  std::lock_guard lock(workspace_mutex_);
  auto it = graph_workspaces_.find(workspace);
  return it == graph_workspaces_.end() ? 0 : it->second.high_water();
}

size_t DeviceContext::reserve(size_t bytes) {
  make_current();
  PoolUsage now = pool_usage();
  if (bytes > now.reserved) {
    // One block of what is missing: freed, it stays in the pool.
    CUdeviceptr block = allocate(bytes - now.reserved);
    release(block);
    check(cu().cuStreamSynchronize(stream_), fmt::format("reserving memory on CUDA device {}", ordinal_));
  }
  return pool_usage().reserved;
}

DeviceContext::PoolUsage DeviceContext::pool_usage() {
  auto get = [&](CUmemPool_attribute attr, const char* what) {
    cuuint64_t v = 0;
    check(cu().cuMemPoolGetAttribute(pool_, attr, &v),
          fmt::format("reading the memory pool's {} on CUDA device {}", what, ordinal_));
    return size_t(v);
  };
  return {get(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, "reserved bytes"),
          get(CU_MEMPOOL_ATTR_USED_MEM_CURRENT, "used bytes"),
          get(CU_MEMPOOL_ATTR_USED_MEM_HIGH, "peak used bytes")};
}

void DeviceContext::reset_peak() {
  cuuint64_t zero = 0;
  check(cu().cuMemPoolSetAttribute(pool_, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &zero),
        fmt::format("resetting the memory pool's peak on CUDA device {}", ordinal_));
}

std::pair<size_t, size_t> DeviceContext::device_free_total() const {
  make_current();
  size_t free_bytes = 0, total_bytes = 0;
  check(cu().cuMemGetInfo(&free_bytes, &total_bytes),
        fmt::format("reading the memory of CUDA device {}", ordinal_));
  return {free_bytes, total_bytes};
}

}  // namespace trident::cuda
