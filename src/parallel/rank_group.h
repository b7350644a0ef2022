// This process as one rank of an expert-parallel run: MPI started, and the communicator its
// device uses: NCCL between GPUs (when built with it), MPI between CPU ranks. A build without MPI
// (TRIDENT_MPI off) runs one rank only, and constructing a RankGroup fails, saying so.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/rank_info.h"

namespace trident {

class RankGroup {
 public:
  // `device`: "cpu" or "cuda" (this rank's GPU is its local rank); `timeout`: how long any
  // collective waits for the slowest rank.
  RankGroup(const std::string& device, std::chrono::milliseconds timeout);
  ~RankGroup();

  const RankInfo& info() const;
  Communicator& comm();
  // Prints the message naming this rank and stops every rank.
  [[noreturn]] void abort(const std::string& message) const;

 private:
  struct Ranks;  // MPI's world and the communicators, kept out of this header
  std::unique_ptr<Ranks> ranks_;
};

}  // namespace trident
