#include "parallel/mpi_world.h"

#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace trident {

namespace {

// Set while the world is up: a rank that exits in between (exit() from deep inside, a return from
// main past the world) says so, because mpirun names it only by an internal process name.
int g_rank_alive = -1;

void report_early_exit() {
  if (g_rank_alive < 0) return;
  std::fprintf(stderr,
               "error on rank %d: this rank is exiting before the run finished; mpirun will "
               "stop the other ranks\n",
               g_rank_alive);
  std::fflush(stderr);
}

}  // namespace

MpiWorld::MpiWorld() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  TRI_CHECK(!initialized, "MPI is already initialized: a process runs at most one MpiWorld");
  // Only the main thread calls MPI; OpenMP threads do the arithmetic in between.
  int provided = 0;
  TRI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS,
            "MPI_Init_thread failed: is this process started by mpirun with a matching MPI?");
  MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &info_.rank);
  MPI_Comm_size(comm_, &info_.size);
  MPI_Comm local;
  MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, info_.rank, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &info_.local_rank);
  MPI_Comm_size(local, &info_.local_size);
  MPI_Comm_free(&local);
  static bool registered = false;
  if (!registered) std::atexit(report_early_exit);
  registered = true;
  g_rank_alive = info_.rank;
}

MpiWorld::~MpiWorld() {
  g_rank_alive = -1;
  MPI_Comm_free(&comm_);
  MPI_Finalize();
}

void MpiWorld::abort(const std::string& message) const {
  g_rank_alive = -1;
  std::fprintf(stderr, "error on rank %d of %d: %s\n", info_.rank, info_.size, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

}  // namespace trident
