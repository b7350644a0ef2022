// Collectives for CPU ranks over MPI, each with a deadline. Every collective is a set of
// non-blocking point-to-point messages, one per peer, polled until done: a peer whose message has
// not arrived by the deadline is named, which a blocking MPI collective could never do.
//
// Control messages (all_gather, exchange_counts) carry the collective's sequence number and name,
// so ranks that took different paths through a step are caught at once instead of exchanging
// the wrong data.
#pragma once

#include <mpi.h>

#include <chrono>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace trident {

class MpiCommunicator final : public Communicator {
 public:
  // `timeout`: how long a collective waits for the slowest rank before naming it.
  MpiCommunicator(MPI_Comm comm, std::chrono::milliseconds timeout);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device payload_device() const override { return Device::CPU; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) override;

  void all_gather(const void* mine, size_t bytes, void* all, std::string_view what) override;
  void all_to_all_v(const void* send, std::span<const size_t> send_bytes, void* recv,
                    std::span<const size_t> recv_bytes, std::string_view what) override;
  void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv,
                       std::string_view what) override;

 private:
  struct Pending {
    MPI_Request request;
    int peer;
    bool is_receive;
  };

  // Sends/receives `bytes` bytes to/from `peer`, in messages of at most 1 GiB (MPI counts are int).
  void post_send(const void* data, size_t bytes, int peer, int tag, std::vector<Pending>& out);
  void post_receive(void* data, size_t bytes, int peer, int tag, std::vector<Pending>& out);
  // Waits for every message, or throws RankFailure naming the peers still missing at the deadline.
  void wait(std::vector<Pending>& pending, std::string_view what);
  // all_gather and exchange_counts: block[r] to rank r, with a header checked on arrival.
  void control_exchange(const std::vector<std::string>& send, std::vector<std::string>& recv,
                        size_t recv_bytes, std::string_view what);

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::chrono::milliseconds timeout_;
  uint64_t sequence_ = 0;  // control collectives so far
};

}  // namespace trident
