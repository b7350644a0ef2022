// Collectives for GPU ranks: payloads (tokens, expert outputs) move GPU to GPU through NCCL on
// the CUDA backend's stream; control messages and counts go over MPI, which also bootstraps NCCL
// (rank 0's unique id goes to every rank). Built with the CUDA backend when nccl.h is found.
//
// Nothing waits forever: NCCL runs non-blocking, and a watchdog thread aborts the NCCL
// communicator when an exchange outlives the timeout, which frees the stream; a roll call over
// MPI then names the ranks that are gone.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "parallel/mpi_communicator.h"
#include "parallel/nccl/nccl_library.h"

namespace trident {

class NcclCommunicator final : public Communicator {
 public:
  // `host`: the same ranks over MPI (it outlives this); `device`: this rank's GPU ordinal.
  NcclCommunicator(MpiCommunicator& host, int device, std::chrono::milliseconds timeout);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  Device payload_device() const override { return Device::CUDA; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) override {
    host_.set_timeout(timeout);
    timeout_ = timeout;
  }

  void all_gather(const void* mine, size_t bytes, void* all, std::string_view what) override {
    host_.all_gather(mine, bytes, all, what);
  }
  void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv,
                       std::string_view what) override {
    host_.exchange_counts(send, recv, what);
  }
  // Returns when the data has arrived (the stream is synchronized).
  void all_to_all_v(const void* send, std::span<const size_t> send_bytes, void* recv,
                    std::span<const size_t> recv_bytes, std::string_view what) override;

 private:
  // Non-blocking NCCL calls return before they are issued; waits until they are.
  void wait_issued(std::string_view what);
  // Waits for the stream with the watchdog armed.
  void synchronize(std::string_view what);
  void watch();
  [[noreturn]] void fail_stuck(std::string_view what);

  MpiCommunicator& host_;
  int device_;
  std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  bool quit_ = false;
  std::atomic<bool> aborted_{false};
  std::thread watchdog_;
};

}  // namespace trident
