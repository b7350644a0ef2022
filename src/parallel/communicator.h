// The collectives expert parallelism needs, behind one interface: MPI for CPU ranks, NCCL for GPU
// ranks. Every rank of the group calls the same collectives in the same order; each call names
// its place in the step (`what`, e.g. "dispatch, layer 4") so that a failure can say where.
//
// No collective waits forever: a rank that does not arrive within the communicator's timeout is
// named in a RankFailure, and the caller stops every rank (World::abort).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "core/error.h"
#include "core/tensor.h"

namespace trident {

// A peer rank died, hung, or took a different path through the step. The message names the rank.
class RankFailure : public Error {
 public:
  using Error::Error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Where all_to_all_v's buffers live: host memory for MPI, GPU memory for NCCL.
  virtual Device payload_device() const = 0;

  // How long a collective waits for the slowest rank before naming it.
  virtual std::chrono::milliseconds timeout() const = 0;
  virtual void set_timeout(std::chrono::milliseconds timeout) = 0;

  // Small control messages in host memory. Every rank contributes `bytes` bytes; `all` receives
  // size() blocks in rank order.
  virtual void all_gather(const void* mine, size_t bytes, void* all, std::string_view what) = 0;

  // Block r of `send` (send_bytes[r] bytes; blocks back to back in rank order) goes to rank r;
  // block s of `recv` comes from rank s. Both sides must agree on the sizes, which callers
  // settle first with all_gather or exchange_counts. Buffers are in payload_device() memory.
  virtual void all_to_all_v(const void* send, std::span<const size_t> send_bytes, void* recv,
                            std::span<const size_t> recv_bytes, std::string_view what) = 0;

  // Each rank sends send[r] to rank r and receives recv[s] from rank s (host memory).
  virtual void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv,
                               std::string_view what) = 0;
};

}  // namespace trident
