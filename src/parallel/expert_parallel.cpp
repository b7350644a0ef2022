#include "parallel/expert_parallel.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace trident {

namespace {

// What each rank tells the others before a step.
struct StepReport {
  int64_t tokens;
  int64_t has_work;
};

}  // namespace

std::vector<ExpertPlacement> contiguous_placements(const ModelConfig& config, int n_ranks,
                                                   int redundant) {
  ExpertPlacement p = ExpertPlacement::contiguous(config.n_routed_experts, n_ranks, redundant);
  return std::vector<ExpertPlacement>(config.num_hidden_layers, p);
}

ExpertParallel::ExpertParallel(Communicator& comm, Backend& backend, const ModelConfig& config,
                               std::vector<ExpertPlacement> placements,
                               const ExpertParallelOptions& options)
    : comm_(comm), backend_(backend), options_(options), placements_(std::move(placements)) {
  TRI_CHECK(int(placements_.size()) == config.num_hidden_layers,
            "expert parallelism: {} placements for {} layers", placements_.size(),
            config.num_hidden_layers);
  for (const ExpertPlacement& p : placements_)
    TRI_CHECK(p.n_ranks() == comm.size() && p.n_experts() == config.n_routed_experts,
              "expert placement over {} ranks of {} experts does not fit {} ranks and {} experts",
              p.n_ranks(), p.n_experts(), comm.size(), config.n_routed_experts);
  dispatch_config_.hidden = config.hidden_size;
  dispatch_config_.top_k = config.num_experts_per_tok;
  dispatch_config_.n_experts = config.n_routed_experts;
  dispatch_config_.activation = backend.activation_dtype();
  dispatch_config_.fp8_payload = options.payload == PayloadChoice::Fp8 ||
                                 (options.payload == PayloadChoice::Auto && config.fp8);
  normal_ = make_normal_dispatch_combine(comm, dispatch_config_);
}

StepPlan ExpertParallel::begin_step(int64_t tokens, bool has_work) {
  const StepReport mine{tokens, has_work ? 1 : 0};
  std::vector<StepReport> all(comm_.size());
  comm_.all_gather(&mine, sizeof(mine), all.data(), fmt::format("start of step {}", step_++));
  StepPlan plan;
  bool any_work = false;
  for (const StepReport& r : all) {
    plan.total_tokens += r.tokens;
    plan.max_tokens = std::max(plan.max_tokens, r.tokens);
    any_work |= r.has_work != 0;
  }
  plan.stop = !any_work;
  plan.mode =
      choose_dispatch_mode(options_.dispatch, plan.max_tokens, options_.low_latency_max_tokens);
  step_mode_ = plan.mode;
  return plan;
}

void ExpertParallel::wait_for_ranks_loaded() {
  const std::chrono::milliseconds step_timeout = comm_.timeout();
  comm_.set_timeout(std::max(step_timeout, options_.load_timeout));
  int64_t loaded = 1;
  std::vector<int64_t> all(comm_.size());
  comm_.all_gather(&loaded, sizeof(loaded), all.data(), "weights loaded");
  comm_.set_timeout(step_timeout);
}

void ExpertParallel::finish() {
  int64_t done = 1;
  std::vector<int64_t> all(comm_.size());
  comm_.all_gather(&done, sizeof(done), all.data(), "end of run");
}

void ExpertParallel::moe_experts(int layer, const Tensor& x, const Tensor& topk_ids,
                                 const Tensor& topk_weights, const ExpertWeights& experts,
                                 Tensor& out) {
  TRI_CHECK(step_mode_ == DispatchMode::Normal, "dispatch mode {} has no implementation here",
            int(step_mode_));
  TRI_CHECK(int(experts.global_to_local.size()) == dispatch_config_.n_experts,
            "layer {}: expert map covers {} experts, the model has {}", layer,
            experts.global_to_local.size(), dispatch_config_.n_experts);
  const std::string what = fmt::format("layer {}", layer);
  const ExpertPlacement& placement = placements_.at(layer);
  for (int e : placement.experts_of(comm_.rank()))
    TRI_CHECK(experts.global_to_local[e] >= 0,
              "layer {}: rank {} is to compute expert {} but did not load it", layer, comm_.rank(),
              e);
  ReceivedTokens got = normal_->dispatch(x, topk_ids, topk_weights, placement, what);
  tokens_received_ += got.n;
  Tensor expert_out;
  if (got.n > 0) {
    // The received ids say "computed elsewhere" with one id past the last expert; this rank's
    // map sends it nowhere.
    ExpertWeights here = experts;
    here.global_to_local.push_back(-1);
    expert_out = backend_.alloc(dispatch_config_.activation, {got.n, dispatch_config_.hidden});
    backend_.moe_experts(got.x, got.topk_ids, got.topk_weights, here, expert_out);
  }
  normal_->combine(expert_out, out, what);
}

}  // namespace trident
