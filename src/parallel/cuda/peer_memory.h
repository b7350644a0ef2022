// GPU memory every rank of a run can write: each rank allocates one buffer, exports it with a
// CUDA IPC handle, and maps the buffers of all the others into its address space (over NVLink
// between GPUs; ranks that are threads of one process use each other's pointers directly). The
// low-latency dispatch writes tokens straight into its peers' buffers this way.
//
// Needs every rank on one host with peer access between their GPUs; opening is collective and
// every rank reaches the same verdict, so when it is not possible all of them go without.
#pragma once

#include <cuda.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace trident {

namespace cuda {
class DeviceContext;
}

class PeerMemory {
 public:
  // Collective. Returns null and says why in `why` when the ranks cannot share GPU memory.
  // The buffer starts zeroed on every rank before any peer can write to it.
  static std::unique_ptr<PeerMemory> open(Communicator& comm, cuda::DeviceContext& device,
                                          size_t bytes, std::string* why);
  ~PeerMemory();
  PeerMemory(const PeerMemory&) = delete;
  PeerMemory& operator=(const PeerMemory&) = delete;

  size_t bytes() const { return bytes_; }
  CUdeviceptr local() const { return peers_[rank_]; }
  // Every rank's buffer as this process addresses it, in rank order (this rank's included).
  const std::vector<CUdeviceptr>& peers() const { return peers_; }

 private:
  PeerMemory() = default;

  int rank_ = 0;
  size_t bytes_ = 0;
  std::vector<CUdeviceptr> peers_;
  std::vector<bool> mapped_;  // opened from an IPC handle, to be closed
};

}  // namespace trident
