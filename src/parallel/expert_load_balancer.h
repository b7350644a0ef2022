// The expert load balancer (EPLB) of a running engine. It counts the tokens the gate gives each
// routed expert (a backend op per MoE layer, into one [layers, experts] counter on the device),
// sums the ranks' counts every few steps for /metrics and the expert load file, and, with
// expert parallelism, moves experts while the engine runs:
//
//   between two steps, on every rank at the same point (ExpertParallel's between-steps hook),
//   every --eplb-interval steps or when asked (POST /admin/rebalance_experts): the ranks sum
//   their counts since the last rebalance, each plans the same placements from the same sums
//   (placement_policy.h) and checks that all agree, loads the experts it is newly given from the
//   (mapped) checkpoint, waits for the others to have theirs, and then all swap the placement
//   and the model's expert weights before the step. Requests in flight never notice: nothing
//   but the experts' homes changes, so outputs are those of one rank holding every expert (up
//   to the order in which partial sums are added).
//
// Known gap: decode steps run as CUDA graphs (one rank on a GPU) count their padding rows too
// (token 0 at position 0, the same experts every step), at most the bucket's rounding.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "model/deepseek_v3.h"
#include "parallel/expert_load.h"
#include "parallel/expert_parallel.h"
#include "parallel/placement_policy.h"

namespace trident {

struct EplbOptions {
  // Steps between rebalances while running (0: never, except when asked).
  int interval = 0;
  // Hosts the ranks span (for the hierarchical policy); ranks of a host are consecutive.
  int n_nodes = 1;
  // Steps between sums of the ranks' counts (what /metrics shows). One rank needs no exchange
  // and takes its counts after every step.
  int sync_steps = 16;
  // The counts since start, written by rank 0 when the run ends (empty: not written).
  std::filesystem::path load_file;
};

// Loads routed expert `expert` of MoE layer `layer` into the backend.
using ExpertSource = std::function<MlpWeights(int layer, int expert)>;

struct RebalanceResult {
  bool applied = false;      // false: the plan was no better than the placement in use
  int64_t copies_moved = 0;  // expert copies placed on ranks that did not hold them, all ranks
  int64_t loaded_here = 0;   // of which this rank loaded
  // The busiest rank's expected load over the mean, averaged over the MoE layers, on the load
  // the plan came from: under the placement before, and under the one in use after.
  double imbalance_before = 1, imbalance_after = 1;
  double seconds = 0;
};

// Gives the ranks the experts of `placements` (one per layer; every rank calls it between the
// same two steps with the same placements): each rank loads from `source` the experts it is
// newly given, keeps those it had, drops the rest, waits for every rank to have loaded, then the
// model and expert parallelism switch to them. Returns the expert copies this rank loaded.
// For benchmarks and tools that place experts themselves.
int64_t apply_placements(DeepseekV3& model, ExpertParallel& ep,
                         std::vector<ExpertPlacement> placements, const ExpertSource& source);

class ExpertLoadBalancer {
 public:
  // Starts counting in `model` (its MoE layers add to a counter in `backend`); with `ep`, hooks
  // into its steps and rebalances by `options`, loading experts from `source`.
  ExpertLoadBalancer(DeepseekV3& model, Backend& backend, ExpertParallel* ep, ExpertSource source,
                     const EplbOptions& options);
  ~ExpertLoadBalancer();
  ExpertLoadBalancer(const ExpertLoadBalancer&) = delete;
  ExpertLoadBalancer& operator=(const ExpertLoadBalancer&) = delete;

  // The counts so far are not the workload's (trial steps of the memory plan, graph captures):
  // counting starts again from zero.
  void forget_counts();
  // One rank alone, after each step it ran (engine thread).
  void after_step();
  // Every rank, when the run ends: sums the counts a last time; rank 0 writes the load file.
  void finish();
  // Any thread: rebalance between the next two steps. Returns why not when the run cannot (one
  // rank; a placement the policy cannot make), empty when it will.
  std::string request_rebalance();

  // Every rank between the same two steps, with the same `load`: plans placements from it and
  // applies them if they lower the busiest rank's load. Also what --eplb-interval runs.
  RebalanceResult rebalance(const ExpertLoad& load);

  // Any thread: the counts summed over ranks at the last sum, and the figures for /metrics.
  ExpertLoad totals() const;
  ExpertLoadSummary summary() const;
  bool expert_parallel() const { return ep_ != nullptr; }

 private:
  void between_steps(int64_t step, bool requested);
  // This rank's counts since start (a copy from the device).
  ExpertLoad local_counts() const;
  // Every rank at once with expert parallelism: the counts of all ranks, summed.
  void sum_counts();
  void publish();

  DeepseekV3& model_;
  Backend& backend_;
  ExpertParallel* ep_;
  ExpertSource source_;
  EplbOptions options_;
  PlacementShape shape_;
  std::string cannot_rebalance_;  // why, when this run cannot move experts
  Tensor counter_;                // i64 [layers, experts] in backend memory
  ExpertLoad zero_;               // this rank's counts when counting (re)started
  ExpertLoad totals_;             // engine thread: all ranks' counts since start, at the last sum
  ExpertLoad at_rebalance_;       // totals_ at the last rebalance (or start)
  int64_t steps_ = 0;             // one rank: steps counted
  int64_t rebalances_ = 0, copies_moved_ = 0;
  double rebalance_seconds_ = 0;

  mutable std::mutex mutex_;  // guards what other threads read
  ExpertLoad published_;
  ExpertLoadSummary summary_;
};

}  // namespace trident
