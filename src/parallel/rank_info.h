// Which rank of a run this process is, with no MPI types, so that code asking only that builds
// without MPI too.
#pragma once

namespace trident {

struct RankInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // among the ranks on this host: picks the GPU
  int local_size = 1;
};

// True when this process was started by mpirun (or another MPI launcher) as one of its ranks.
bool started_by_mpi_launcher();

}  // namespace trident
