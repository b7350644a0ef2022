// This process as one rank of an expert-parallel run: MPI started, and the communicator its
// device uses: NCCL between GPUs (when built with it), MPI between CPU ranks.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_world.h"

namespace trident {

class RankGroup {
 public:
  // `device`: "cpu" or "cuda" (this rank's GPU is its local rank); `timeout`: how long any
  // collective waits for the slowest rank.
  RankGroup(const std::string& device, std::chrono::milliseconds timeout);
  ~RankGroup();

  const RankInfo& info() const { return world_.info(); }
  Communicator& comm() { return *comm_; }
  // Prints the message naming this rank and stops every rank.
  [[noreturn]] void abort(const std::string& message) const { world_.abort(message); }

 private:
  MpiWorld world_;
  std::unique_ptr<MpiCommunicator> host_;
  std::unique_ptr<Communicator> device_comm_;  // NCCL, for GPU ranks
  Communicator* comm_ = nullptr;
};

}  // namespace trident
