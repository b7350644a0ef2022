// `--ep N`: run as N ranks for expert parallelism. Outside mpirun, the command re-runs itself
// under `mpirun -np N` on this host (OpenMPI); started by mpirun (by hand, e.g. across hosts), it
// joins the ranks mpirun started. Options shared by every command that loads a model.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "parallel/expert_load_balancer.h"
#include "parallel/expert_parallel.h"
#include "parallel/rank_group.h"

namespace trident::cli {

struct ParallelArgs {
  int ep = 0;  // 0: 1, or mpirun's rank count under mpirun
  double timeout_s = 60;
  double load_timeout_s = 1800;
  int64_t low_latency_tokens = 128;
  int64_t max_exchange_tokens = 0;
  std::string dispatch = "auto";
  std::string payload = "auto";
  int redundant_experts = 0;
  std::string expert_placement;  // a placement file (trident eplb); empty: contiguous
  // The expert load balancer: rebalance every N steps, the nodes the ranks span, and the file
  // the counts go to at the end.
  int eplb_interval = 0;
  int eplb_nodes = 1;
  std::string expert_load_file;

  ExpertParallelOptions options() const;
  EplbOptions eplb() const;
};

void add_parallel_options(CLI::App& command, ParallelArgs& args);

// The ranks of this run, MPI started; null for a single rank. With --ep N > 1 outside mpirun,
// replaces this process by `mpirun -np N <this command>` and does not return.
std::unique_ptr<RankGroup> start_ranks(const ParallelArgs& args, const std::string& device);

}  // namespace trident::cli
