// One GPU as Trident uses it: the device's primary context (shared with any other library in the
// process), the stream Trident's work runs on, the kernel modules loaded into the context, and
// stream-ordered device memory from the device's memory pool. One per device per process, made
// on first use and kept until exit, so several GPUs work from one process as well as one each.
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "backend/cuda/kernel_launch.h"
#include "core/region_allocator.h"

namespace trident::cuda {

class DeviceContext {
 public:
  static DeviceContext& get(int ordinal);
  static int device_count();

  int ordinal() const { return ordinal_; }
  const std::string& name() const { return name_; }
  int arch() const { return arch_; }  // 90 for sm_90
  int sm_count() const { return sm_count_; }
  int max_shared_per_block() const { return max_shared_per_block_; }
  CUstream stream() const { return stream_; }

  // Makes this device's context current on the calling thread.
  void make_current() const;

  // The function of `variant`, loading its module into this context on first use.
  CUfunction function(const KernelVariant& variant);

  // Device memory, allocated and freed in stream order on stream(): a release may follow the
  // launches that still read the memory.
  CUdeviceptr allocate(size_t bytes);
  void release(CUdeviceptr ptr) noexcept;

  // The memory plan: takes `bytes` from the device into this context's pool at once (allocated,
  // then freed into the pool, which keeps it), so that every later allocation, weights, KV cache
  // and step workspace alike, is carved from that one reservation and none reaches the driver.
  // Only grows the reservation; returns the pool's reserved bytes.
  size_t reserve(size_t bytes);
  // The pool's figures: bytes reserved from the device, in use by live allocations, and the most
  // in use since reset_peak().
  struct PoolUsage {
    size_t reserved = 0, in_use = 0, peak_in_use = 0;
  };
  PoolUsage pool_usage();
  void reset_peak();
  // CUDA graphs. While a graph is captured on stream(), allocations come from a graph workspace
  // instead of the pool: captured pool allocations would become graph memory nodes, outside the
  // memory plan, and an address a graph records must stay valid for every replay. A workspace
  // is carved first fit in capture order, so a region freed during a capture is reused by work
  // the captured chain runs after it; graphs replay one at a time on stream(), so the graphs of
  // one owner share its workspace. Memory a capture left allocated (a graph's outputs) returns
  // to its workspace whenever it is released. Each backend on the device has its own workspace.
  int add_graph_workspace(CUdeviceptr base, size_t bytes);
  void remove_graph_workspace(int id);
  void begin_capture(int workspace);
  void end_capture();
  bool capturing() const { return capturing_ >= 0; }
  // Bytes of a workspace its captures have touched.
  size_t graph_workspace_high_water(int workspace);

  // The device's free and total memory, as the driver reports them.
  std::pair<size_t, size_t> device_free_total() const;

  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

 private:
  explicit DeviceContext(int ordinal);

  int ordinal_;
  CUdevice device_{};
  CUcontext context_{};
  CUstream stream_{};
  CUmemoryPool pool_{};
  std::string name_;
  int arch_ = 0;
  int sm_count_ = 0;
  int max_shared_per_block_ = 0;
  std::mutex mutex_;
  std::mutex workspace_mutex_;
  std::map<int, RegionAllocator> graph_workspaces_;
  int next_workspace_ = 0;
  std::atomic<int> capturing_{-1};  // the workspace of the capture under way, or -1
  std::unordered_map<const KernelVariant*, CUfunction> functions_;
};

}  // namespace trident::cuda
