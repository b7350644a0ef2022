// Expert parallelism for the DeepSeek-V3 forward pass: each rank holds some routed experts
// (ExpertPlacement), and every MoE layer dispatches tokens to the ranks holding their experts,
// runs the experts held here, and combines the results back (DispatchCombine).
//
// Ranks step together: before each step every rank says how many tokens it has and whether it
// still has work (begin_step), so a rank with no tokens still joins each MoE layer's exchanges
// (DeepseekV3::idle_step), all ranks pick the same dispatch mode, and all stop together.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/stage_timer.h"
#include "model/config.h"
#include "model/deepseek_v3.h"
#include "parallel/communicator.h"
#include "parallel/dispatch_combine.h"
#include "parallel/expert_placement.h"

namespace trident {

enum class PayloadChoice : uint8_t { Auto, Fp8, Activation };

struct ExpertParallelOptions {
  DispatchModeChoice dispatch = DispatchModeChoice::Auto;
  // Auto takes low-latency mode for steps whose largest batch has at most this many tokens; it
  // is also the size of the low-latency buffers (tokens a rank sends per exchange).
  int64_t low_latency_max_tokens = 128;
  // Normal mode: tokens a rank sends per exchange at most (0: no limit); larger batches go in
  // several rounds, which bounds the exchange buffers of long prefills.
  int64_t max_tokens_per_exchange = 0;
  // Auto: FP8 tokens for FP8 checkpoints (their experts quantize their input the same way, so
  // results are unchanged), the activation dtype for BF16 ones.
  PayloadChoice payload = PayloadChoice::Auto;
  // How long ranks wait for each other to finish loading weights, which takes long and varies
  // from rank to rank; every other exchange waits the communicator's timeout.
  std::chrono::milliseconds load_timeout{std::chrono::minutes(30)};
};

struct StepPlan {
  bool stop = false;         // no rank has work left
  int64_t total_tokens = 0;  // over all ranks, this step
  int64_t max_tokens = 0;    // the largest batch of any rank
  DispatchMode mode = DispatchMode::Normal;
};

// One placement per layer (entries of dense layers are unused): experts split in contiguous
// blocks with `redundant` extra copies in all, the same in every layer.
std::vector<ExpertPlacement> contiguous_placements(const ModelConfig& config, int n_ranks,
                                                   int redundant);

class ExpertParallel final : public RoutedExpertsHook {
 public:
  ExpertParallel(Communicator& comm, Backend& backend, const ModelConfig& config,
                 std::vector<ExpertPlacement> placements, const ExpertParallelOptions& options);

  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  Communicator& comm() { return comm_; }
  const ExpertPlacement& placement(int layer) const { return placements_.at(layer); }
  const std::vector<ExpertPlacement>& placements() const { return placements_; }
  // Every rank, between the same two steps, with the same placements (the expert load
  // balancer), once each rank holds the experts they give it: the next step dispatches by them.
  void set_placements(std::vector<ExpertPlacement> placements);
  bool fp8_payload() const { return dispatch_config_.fp8_payload; }
  bool has_low_latency() const { return low_latency_ != nullptr; }
  // Tokens dispatched to this rank's experts so far by normal-mode exchanges, from all ranks.
  int64_t tokens_received() const { return tokens_received_; }
  // Dispatch-and-combine exchanges so far (a layer's batch may take several rounds).
  int64_t exchanges() const { return exchanges_; }
  // For LoadOptions::holds_expert: this rank loads only these experts.
  bool holds_expert(int layer, int expert) const {
    return placements_.at(layer).holds(comm_.rank(), expert);
  }

  // Every rank, once its weights are loaded: waits for the others (up to the load timeout).
  void wait_for_ranks_loaded();

  // Every rank, before every step: `tokens` it runs in this step and whether it has work left.
  // The group stops when no rank has work left.
  StepPlan begin_step(int64_t tokens, bool has_work);
  // Called by begin_step on every rank at the same point, when the group goes on to a step:
  // `step` counts from 0, `rebalance_requested` is whether any rank asked (request_rebalance)
  // since the last step. The expert load balancer works here.
  void set_between_steps(std::function<void(int64_t step, bool rebalance_requested)> hook) {
    between_steps_ = std::move(hook);
  }
  // Any thread: the group rebalances its experts between the next two steps.
  void request_rebalance() { rebalance_requested_ = true; }
  // The last collective of a run, so no rank finalizes while another still waits for it.
  void finish();

  void moe_experts(int layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                   const ExpertWeights& experts, Tensor& out) override;
  // Benchmarks: marks each exchange's dispatch, experts and combine (null: no marks).
  void set_stage_timer(StageTimer* timer) { timer_ = timer; }

 private:
  Communicator& comm_;
  Backend& backend_;
  ExpertParallelOptions options_;
  DispatchConfig dispatch_config_;
  std::vector<ExpertPlacement> placements_;
  std::unique_ptr<DispatchCombine> normal_;
  std::unique_ptr<DispatchCombine> low_latency_;  // GPU ranks of one host only
  DispatchMode step_mode_ = DispatchMode::Normal;
  int64_t step_max_tokens_ = 0;  // the largest batch of any rank in this step
  int64_t step_ = 0;
  int64_t tokens_received_ = 0;
  int64_t exchanges_ = 0;
  StageTimer* timer_ = nullptr;
  std::function<void(int64_t, bool)> between_steps_;
  std::atomic<bool> rebalance_requested_{false};
};

}  // namespace trident
