// The end-to-end benchmark (`trident bench e2e`): a model of a preset's shape with random FP8
// weights made on the device (model/random_weights.h), stepped through decode batches (one new
// token for each of B requests with long contexts) and prefill batches (whole prompts), with
// expert routing steered to be even or Zipf-skewed (runtime/routing_target.h). Each case times
// its steps on the device, one more step stage by stage (backend/stage_timer.h), and takes the
// roofline floor of its bytes and FLOPs against ceilings measured in the same run
// (runtime/step_roofline.h, runtime/device_ceilings.h).
//
// With ranks (expert parallelism), every rank runs its own batch of the case's size (attention
// data parallel) and the routed experts are split over the ranks; figures are per rank, gathered
// on rank 0. Decode steps carry host-built inputs made before timing, and the steps are issued
// back to back without waiting for their tokens: the device time of the step, as a server that
// keeps tokens on the device would see it.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"
#include "runtime/device_ceilings.h"
#include "runtime/routing_target.h"
#include "runtime/step_roofline.h"

namespace trident {

struct E2eOptions {
  std::string preset = "deepseek-v3";
  // Decoder layers to build (the preset's first dense layers, then MoE layers). 0: on a device
  // with a memory plan, as many as it holds beside the KV cache and a step's workspace; elsewhere
  // the preset's own count.
  int layers = 0;
  std::vector<int> decode_batches = {32, 64, 128, 256};  // requests per rank
  std::vector<int> prefill_tokens = {4096, 8192, 16384};  // token budget of a step per rank
  int context = 2000;  // decode: tokens cached per request; prefill: prompt length
  std::vector<RoutingKind> routings = {RoutingKind::Uniform, RoutingKind::Zipf};
  double zipf_s = 1.0;
  int warmup = 2;
  int steps = 5;
  // Steering the router's bias toward the target load: iterations, and tokens counted in each.
  int steering_iterations = 16;
  int steering_tokens = 1024;
  uint64_t seed = 1;

  // Decode steps replayed as CUDA graphs (runtime/decode_graphs.h), one per batch bucket, where
  // the backend has graphs and there is one rank; every decode case also times eager steps.
  bool cuda_graphs = true;
  // The grouped down-projection kernel of the routed experts ("kernel/variant", CUDA), in place
  // of the default by rows per expert: to tell a kernel's effect on the figures from the rest.
  std::string moe_down;

  std::string device = "cpu";
  int device_index = 0;
  double gpu_memory_fraction = 0.9;
  Communicator* ranks = nullptr;  // null: one rank
  ExpertParallelOptions expert_parallel;
};

// One rank's figures for one case; plain numbers, so ranks send them to rank 0 as bytes.
struct RankFigures {
  double step_s = 0;         // median of the timed steps (decode graphs' where used)
  double eager_step_s = 0;   // median of the timed steps launched op by op
  double marked_step_s = 0;  // the step timed stage by stage (marks cost a little)
  double stage_s[kStageCount] = {};
  // From the marked step: a dense layer, an MoE layer (means), and the work outside the layers.
  double dense_layer_s = 0, moe_layer_s = 0, outside_s = 0;
  // The preset's whole model (e.g. 61 layers) from the per-layer times, on the marked step's
  // scale; full_s rescales it to the timed steps: full_marked_s * step_s / marked_step_s.
  double full_marked_s = 0, full_s = 0;
  double floor_s = 0;  // this run's layers
  double stage_floor_s[kStageCount] = {};
  double full_floor_s = 0;  // the preset's whole model
  double bytes = 0, fp8_flops = 0, bf16_flops = 0;
  double routed_rows = 0;  // token-expert pairs computed here over all MoE layers
  // The routing of this case's batch (all ranks' tokens), averaged over the MoE layers.
  LoadSummary load;
  double rank_rows_max_over_mean = 1;  // routed rows of the busiest rank over the mean
};

struct E2eCase {
  std::string phase;  // "decode" or "prefill"
  RoutingKind routing = RoutingKind::Uniform;
  int sequences = 0;  // per rank: requests (decode) or prompts (prefill)
  int tokens = 0;     // per rank per step
  int context = 0;
  std::vector<RankFigures> ranks;  // every rank's, on rank 0; this rank's elsewhere
};

struct E2eReport {
  std::string preset, device_name;
  int ranks = 1;
  bool cuda_graphs = false;  // decode steps timed as graph replays
  std::string cuda_graphs_note;  // why not, where asked for and not used
  int layers = 0, dense_layers = 0;
  int full_layers = 0, full_dense_layers = 0;  // the preset's own
  MeasuredCeilings ceilings;                   // rank 0's
  struct Memory {
    int64_t reserved = 0, weights = 0, step_workspace = 0, graph_workspace = 0, kv = 0;
    int kv_pages = 0;
  } memory;
  E2eOptions options;
  std::vector<E2eCase> cases;

  // Per case, means over the ranks: tokens per second per rank (GPU), the same for the preset's
  // whole model, and step time over the floor.
  static double tokens_per_s(const E2eCase& c);
  static double full_tokens_per_s(const E2eCase& c);
  static double full_floor_tokens_per_s(const E2eCase& c);
  static double step_over_floor(const E2eCase& c);
};

E2eReport run_e2e_bench(const E2eOptions& options);

}  // namespace trident
