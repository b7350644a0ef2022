// The processes of one run as MPI sees them: started by `mpirun` (by hand, across hosts) or by
// `--ep N` (which re-runs the command under mpirun on this host). Initializes MPI once, says which
// rank this is and which ranks share its host, and stops every rank when one fails.
#pragma once

#include <mpi.h>

#include <string>

#include "parallel/rank_info.h"

namespace trident {

class MpiWorld {
 public:
  // Initializes MPI; a process has at most one world.
  MpiWorld();
  // Finalizes MPI. Ranks should first pass a last collective together (MpiCommunicator), so that
  // finalizing never waits on a rank that is gone.
  ~MpiWorld();
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;

  const RankInfo& info() const { return info_; }
  // Every rank of the run: a duplicate of MPI_COMM_WORLD whose errors are returned, not fatal.
  MPI_Comm comm() const { return comm_; }

  // Prints "error on rank R of N: message" to stderr and stops every rank with exit status 1.
  [[noreturn]] void abort(const std::string& message) const;

 private:
  RankInfo info_;
  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace trident
