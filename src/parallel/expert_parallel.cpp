#include "parallel/expert_parallel.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#ifdef TRIDENT_CUDA
#include "backend/cuda/cuda_backend.h"
#include "parallel/cuda/device_dispatch_combine.h"
#endif

namespace trident {

namespace {

// What each rank tells the others before a step.
struct StepReport {
  int64_t tokens;
  int64_t has_work;
  int64_t rebalance;  // this rank was asked to rebalance the experts
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
  std::string no_low_latency = "this run's ranks are CPU ranks";
#ifdef TRIDENT_CUDA
  if (backend.device() == Device::CUDA) {
    cuda::DeviceContext& device = static_cast<cuda::CudaBackend&>(backend).context();
    normal_ = make_device_normal_dispatch_combine(comm, dispatch_config_, device, device.stream());
    if (options.dispatch != DispatchModeChoice::Normal)
      low_latency_ = make_low_latency_dispatch_combine(comm, dispatch_config_, device,
                                                       device.stream(),
                                                       options.low_latency_max_tokens,
                                                       &no_low_latency);
  }
#endif
  if (!normal_) normal_ = make_normal_dispatch_combine(comm, dispatch_config_);
  TRI_CHECK(options.dispatch != DispatchModeChoice::LowLatency || low_latency_,
            "--ep-dispatch low-latency: low-latency dispatch writes into peer GPUs' memory and "
            "needs GPU ranks on one host, but {}; use --ep-dispatch normal or auto",
            no_low_latency);
}

StepPlan ExpertParallel::begin_step(int64_t tokens, bool has_work) {
  const StepReport mine{tokens, has_work ? 1 : 0, rebalance_requested_.exchange(false) ? 1 : 0};
  std::vector<StepReport> all(comm_.size());
  comm_.all_gather(&mine, sizeof(mine), all.data(), fmt::format("start of step {}", step_++));
  StepPlan plan;
  bool any_work = false, rebalance = false;
  for (const StepReport& r : all) {
    plan.total_tokens += r.tokens;
    plan.max_tokens = std::max(plan.max_tokens, r.tokens);
    any_work |= r.has_work != 0;
    rebalance |= r.rebalance != 0;
  }
  plan.stop = !any_work;
  plan.mode = choose_dispatch_mode(options_.dispatch, plan.max_tokens,
                                   options_.low_latency_max_tokens, low_latency_ != nullptr);
  step_mode_ = plan.mode;
  step_max_tokens_ = plan.max_tokens;
  // The GPU exchanges report a peer that missed a deadline here, between steps, rather than
  // waiting on the device after every layer.
  if (low_latency_) low_latency_->check_peers(fmt::format("step {}", step_ - 1));
  if (!plan.stop && between_steps_) between_steps_(step_ - 1, rebalance);
  return plan;
}

void ExpertParallel::set_placements(std::vector<ExpertPlacement> placements) {
  TRI_CHECK(placements.size() == placements_.size(),
            "expert parallelism: {} new placements for {} layers", placements.size(),
            placements_.size());
  for (const ExpertPlacement& p : placements)
    TRI_CHECK(p.n_ranks() == comm_.size() && p.n_experts() == dispatch_config_.n_experts,
              "expert placement over {} ranks of {} experts does not fit {} ranks and {} experts",
              p.n_ranks(), p.n_experts(), comm_.size(), dispatch_config_.n_experts);
  placements_ = std::move(placements);
  normal_->forget_placements();
  if (low_latency_) low_latency_->forget_placements();
}

void ExpertParallel::wait_for_ranks_loaded() {
  const std::chrono::milliseconds step_timeout = comm_.timeout();
  comm_.set_timeout(std::max(step_timeout, options_.load_timeout));
  int64_t loaded = 1;
  std::vector<int64_t> all(comm_.size());
  try {
    comm_.all_gather(&loaded, sizeof(loaded), all.data(), "weights loaded");
  } catch (const RankFailure& e) {
    throw RankFailure(fmt::format("{}; loading weights may take up to --ep-load-timeout", e.what()));
  }
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
  TRI_CHECK(int(experts.global_to_local.size()) == dispatch_config_.n_experts,
            "layer {}: expert map covers {} experts, the model has {}", layer,
            experts.global_to_local.size(), dispatch_config_.n_experts);
  const ExpertPlacement& placement = placements_.at(layer);
  for (int e : placement.experts_of(comm_.rank()))
    TRI_CHECK(experts.global_to_local[e] >= 0,
              "layer {}: rank {} is to compute expert {} but did not load it", layer, comm_.rank(),
              e);
  DispatchCombine& exchange = step_mode_ == DispatchMode::LowLatency ? *low_latency_ : *normal_;
  const int64_t T = x.defined() ? x.dim(0) : 0;
  TRI_CHECK(T <= step_max_tokens_,
            "layer {}: rank {} runs {} tokens but said {} at the start of the step", layer,
            comm_.rank(), T, step_max_tokens_);
  int64_t per_round = exchange.max_tokens_per_exchange();
  if (step_mode_ == DispatchMode::Normal && options_.max_tokens_per_exchange > 0)
    per_round = per_round > 0 ? std::min(per_round, options_.max_tokens_per_exchange)
                              : options_.max_tokens_per_exchange;
  // Every rank runs as many rounds as the largest batch needs, with or without tokens of its own.
  const int64_t rounds =
      per_round > 0 ? std::max<int64_t>(1, (step_max_tokens_ + per_round - 1) / per_round) : 1;
  // The received ids say "computed elsewhere" with one id past the last expert; this rank's map
  // sends it nowhere.
  ExpertWeights here = experts;
  here.global_to_local.push_back(-1);
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t lo = per_round > 0 ? std::min(T, round * per_round) : 0;
    const int64_t hi = per_round > 0 ? std::min(T, lo + per_round) : T;
    const std::string what = rounds > 1 ? fmt::format("layer {}, round {} of {}", layer, round + 1,
                                                      rounds)
                                        : fmt::format("layer {}", layer);
    const bool mine = hi > lo;
    if (timer_) timer_->mark(Stage::Dispatch, layer);
    ReceivedTokens got =
        exchange.dispatch(mine ? x.rows(lo, hi) : Tensor(), mine ? topk_ids.rows(lo, hi) : Tensor(),
                          mine ? topk_weights.rows(lo, hi) : Tensor(), placement, what);
    if (step_mode_ == DispatchMode::Normal) tokens_received_ += got.n;
    if (timer_) timer_->mark(Stage::Experts, layer);
    Tensor expert_out;
    if (got.n > 0) {
      expert_out = backend_.alloc(dispatch_config_.activation, {got.n, dispatch_config_.hidden});
      backend_.moe_experts(got.x, got.topk_ids, got.topk_weights, here, expert_out);
    }
    Tensor out_rows = mine ? out.rows(lo, hi) : Tensor();
    if (timer_) timer_->mark(Stage::Combine, layer);
    exchange.combine(expert_out, out_rows, what);
    ++exchanges_;
  }
}

}  // namespace trident
