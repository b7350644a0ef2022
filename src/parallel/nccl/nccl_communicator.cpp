#include "parallel/nccl/nccl_communicator.h"

#include <fmt/format.h>

#include <cstdlib>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"

namespace trident {

NcclCommunicator::NcclCommunicator(MpiCommunicator& host, int device,
                                   std::chrono::milliseconds timeout)
    : host_(host), device_(device), timeout_(timeout) {
  // NVLink multicast can take a shared host's GPUs down; keep it off unless asked for.
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  cuda::DeviceContext& ctx = cuda::DeviceContext::get(device);
  ctx.make_current();
  // CUstream and cudaStream_t are the same handle: NCCL's work is ordered with the backend's.
  stream_ = ctx.stream();
  const NcclApi& api = nccl();
  ncclUniqueId id{};
  if (host.rank() == 0) {
    ncclResult_t r = api.ncclGetUniqueId(&id);
    TRI_CHECK(r == ncclSuccess, "ncclGetUniqueId failed on rank 0: {}", api.ncclGetErrorString(r));
  }
  std::vector<ncclUniqueId> ids(host.size());
  host.all_gather(&id, sizeof(id), ids.data(), "NCCL bootstrap");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = api.ncclCommInitRankConfig(&comm_, host.size(), ids[0], host.rank(), &config);
  if (r != ncclSuccess && r != ncclInProgress)
    fail("NCCL setup on rank {} (GPU {}) failed: {}", host.rank(), device,
         api.ncclGetErrorString(r));
  watchdog_ = std::thread([this] { watch(); });
  wait_issued("NCCL setup");
}

NcclCommunicator::~NcclCommunicator() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  if (comm_ && !aborted_) nccl().ncclCommDestroy(comm_);
}

void NcclCommunicator::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!quit_) {
    if (!deadline_) {
      wake_.wait(lock);
      continue;
    }
    auto until = *deadline_;
    wake_.wait_until(lock, until);
    if (deadline_ && *deadline_ == until && std::chrono::steady_clock::now() >= until) {
      // Makes NCCL's kernels give up, so the stream the rank waits on drains.
      nccl().ncclCommAbort(comm_);
      aborted_ = true;
      deadline_.reset();
    }
  }
}

void NcclCommunicator::wait_issued(std::string_view what) {
  const NcclApi& api = nccl();
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    api.ncclCommGetAsyncError(comm_, &state);
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) {
      api.ncclCommAbort(comm_);
      aborted_ = true;
      throw RankFailure(fmt::format("NCCL failed during '{}' on rank {} (GPU {}): {}", what, rank(),
                                    device_, api.ncclGetErrorString(state)));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      api.ncclCommAbort(comm_);
      aborted_ = true;
      fail_stuck(what);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclCommunicator::synchronize(std::string_view what) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    deadline_ = std::chrono::steady_clock::now() + timeout_;
  }
  wake_.notify_all();
  CUresult r = cuda::cu().cuStreamSynchronize(stream_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    deadline_.reset();
  }
  if (aborted_) fail_stuck(what);
  cuda::check(r, fmt::format("'{}' on GPU {}", what, device_));
}

void NcclCommunicator::fail_stuck(std::string_view what) {
  const std::string stuck =
      fmt::format("'{}' over NCCL did not finish within {:.3g} s", what, timeout_.count() / 1000.0);
  // Ranks stuck in the same exchange get here together; those that do not answer are gone.
  int64_t here = 1;
  std::vector<int64_t> all(size());
  try {
    host_.all_gather(&here, sizeof(here), all.data(), "roll call after a stuck NCCL exchange");
  } catch (const RankFailure& e) {
    throw RankFailure(fmt::format("{}; {}", stuck, e.what()));
  }
  throw RankFailure(fmt::format(
      "{}, yet every rank answers over MPI: NCCL or the GPU interconnect hangs (NCCL_DEBUG=INFO "
      "says more)",
      stuck));
}

void NcclCommunicator::all_to_all_v(const void* send, std::span<const size_t> send_bytes,
                                    void* recv, std::span<const size_t> recv_bytes,
                                    std::string_view what) {
  TRI_CHECK(!aborted_, "'{}': NCCL was aborted after an earlier failure on rank {}", what, rank());
  TRI_CHECK(int(send_bytes.size()) == size() && int(recv_bytes.size()) == size(),
            "all_to_all_v: {} send and {} receive sizes for {} ranks", send_bytes.size(),
            recv_bytes.size(), size());
  const NcclApi& api = nccl();
  const char* s = static_cast<const char*>(send);
  char* d = static_cast<char*>(recv);
  size_t so = 0, ro = 0;
  api.ncclGroupStart();
  for (int peer = 0; peer < size(); ++peer) {
    if (send_bytes[peer]) api.ncclSend(s + so, send_bytes[peer], ncclUint8, peer, comm_, stream_);
    if (recv_bytes[peer]) api.ncclRecv(d + ro, recv_bytes[peer], ncclUint8, peer, comm_, stream_);
    so += send_bytes[peer];
    ro += recv_bytes[peer];
  }
  ncclResult_t r = api.ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress)
    throw RankFailure(fmt::format("NCCL all-to-all '{}' on rank {} failed to start: {}", what,
                                  rank(), api.ncclGetErrorString(r)));
  wait_issued(what);
  synchronize(what);
}

}  // namespace trident
