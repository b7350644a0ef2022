#include "parallel/expert_load_balancer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace trident {

namespace {

std::vector<int> sorted(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// Identifies a set of placements, so ranks can check they planned the same (FNV-1a).
uint64_t fingerprint(const std::vector<ExpertPlacement>& placements) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](int64_t v) {
    for (int b = 0; b < 8; ++b) {
      h ^= uint64_t(v >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (const ExpertPlacement& p : placements)
    for (int r = 0; r < p.n_ranks(); ++r) {
      mix(-1 - r);
      for (int e : p.experts_of(r)) mix(e);
    }
  return h;
}

double busiest_over_mean(const ExpertPlacement& p, const std::vector<double>& load) {
  return max_over_mean(expected_rank_loads(p, load));
}

}  // namespace

int64_t apply_placements(DeepseekV3& model, ExpertParallel& ep,
                         std::vector<ExpertPlacement> placements, const ExpertSource& source) {
  const ModelConfig& c = model.config();
  TRI_CHECK(int(placements.size()) == c.num_hidden_layers,
            "expert placements: {} given for {} layers", placements.size(), c.num_hidden_layers);
  const int me = ep.rank();
  int64_t loaded = 0;
  std::vector<std::pair<int, ExpertWeights>> changed;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const std::vector<int> mine = sorted(placements[l].experts_of(me));
    if (mine == sorted(ep.placement(l).experts_of(me))) continue;
    const ExpertWeights& have = model.routed_experts(l);
    ExpertWeights next;
    next.global_to_local.assign(c.n_routed_experts, -1);
    // In expert order, as load_weights lays them out.
    for (int e : mine) {
      next.global_to_local[e] = int32_t(next.gate.size());
      if (const int32_t i = have.global_to_local[e]; i >= 0) {
        next.gate.push_back(have.gate[i]);
        next.up.push_back(have.up[i]);
        next.down.push_back(have.down[i]);
        continue;
      }
      MlpWeights w = source(l, e);
      next.gate.push_back(std::move(w.gate));
      next.up.push_back(std::move(w.up));
      next.down.push_back(std::move(w.down));
      ++loaded;
    }
    changed.emplace_back(l, std::move(next));
  }
  // A token of the next step may go to any copy: every rank must hold its experts before any
  // rank dispatches by the new placements.
  ep.wait_for_ranks_loaded();
  for (auto& [l, experts] : changed) model.routed_experts(l) = std::move(experts);
  ep.set_placements(std::move(placements));
  return loaded;
}

ExpertLoadBalancer::ExpertLoadBalancer(DeepseekV3& model, Backend& backend, ExpertParallel* ep,
                                       ExpertSource source, const EplbOptions& options)
    : model_(model), backend_(backend), ep_(ep), source_(std::move(source)), options_(options) {
  const ModelConfig& c = model.config();
  TRI_CHECK(options.interval >= 0, "--eplb-interval must be 0 or more, got {}", options.interval);
  TRI_CHECK(options.n_nodes >= 1, "--eplb-nodes must be 1 or more, got {}", options.n_nodes);
  TRI_CHECK(options.sync_steps >= 1, "expert load: sums every {} steps must be 1 or more",
            options.sync_steps);
  zero_ = totals_ = at_rebalance_ = published_ = ExpertLoad(c);
  publish();
  if (c.n_routed_experts == 0 || totals_.moe_layers().empty()) {
    cannot_rebalance_ = "the model has no routed experts";
    return;
  }
  counter_ = backend.upload(cpu_tensor(DType::I64, {c.num_hidden_layers, c.n_routed_experts}));
  model.set_expert_counts(counter_);
  if (!ep_) {
    cannot_rebalance_ =
        "one rank holds every expert: there is nothing to move (--ep N moves "
        "experts between N ranks)";
    if (options.interval > 0) spdlog::info("--eplb-interval: {}", cannot_rebalance_);
    return;
  }
  const PhysicalExpertMap map = ep_->placement(totals_.moe_layers().front()).physical_map();
  shape_ = {ep_->size(), map.slots_per_rank * ep_->size() - c.n_routed_experts,
            std::max(c.n_group, 1), options.n_nodes};
  // A placement the policy cannot make is refused at start, not at the first rebalance.
  try {
    plan_layer(std::vector<double>(c.n_routed_experts, 0.0), shape_);
  } catch (const Error& e) {
    cannot_rebalance_ = e.what();
  }
  TRI_CHECK(options.interval == 0 || cannot_rebalance_.empty(), "--eplb-interval: {}",
            cannot_rebalance_);
  ep_->set_between_steps([this](int64_t step, bool requested) { between_steps(step, requested); });
}

ExpertLoadBalancer::~ExpertLoadBalancer() {
  if (ep_) ep_->set_between_steps(nullptr);
  if (counter_.defined()) model_.set_expert_counts(Tensor());
}

ExpertLoad ExpertLoadBalancer::local_counts() const {
  ExpertLoad now(model_.config());
  if (counter_.defined()) backend_.to_host(counter_, now.counts().data());
  return now.since(zero_);
}

void ExpertLoadBalancer::forget_counts() {
  zero_ += local_counts();
  totals_ = at_rebalance_ = ExpertLoad(model_.config());
  publish();
}

void ExpertLoadBalancer::after_step() {
  if (ep_ || !counter_.defined()) return;
  totals_ = local_counts();
  publish();
}

void ExpertLoadBalancer::sum_counts() {
  const ExpertLoad mine = local_counts();
  const size_t n = mine.counts().size();
  std::vector<int64_t> all(n * size_t(ep_->size()));
  ep_->comm().all_gather(mine.counts().data(), n * sizeof(int64_t), all.data(),
                         "expert load counts");
  totals_ = ExpertLoad(model_.config());
  for (size_t r = 0; r < size_t(ep_->size()); ++r)
    for (size_t i = 0; i < n; ++i) totals_.counts()[i] += all[r * n + i];
}

void ExpertLoadBalancer::between_steps(int64_t step, bool requested) {
  const bool due =
      requested || (options_.interval > 0 && step > 0 && step % options_.interval == 0);
  if (!due && step % options_.sync_steps != 0) return;
  sum_counts();
  if (due) {
    // Every rank has the same sums, so every rank takes the same way here.
    const ExpertLoad window = totals_.since(at_rebalance_);
    const char* why = requested ? " (requested)" : "";
    if (window.assignments() > 0) {
      const RebalanceResult r = rebalance(window);
      if (ep_->rank() == 0)
        spdlog::info(
            "expert load balancer, before step {}{}: {}; busiest rank {:.2f}x the mean before, "
            "{:.2f}x after, on the last {} tokens ({:.3f} s)",
            step, why,
            r.applied ? fmt::format("{} expert copies moved", r.copies_moved)
                      : std::string("placement kept (no better one)"),
            r.imbalance_before, r.imbalance_after, window.tokens(), r.seconds);
    } else if (ep_->rank() == 0) {
      spdlog::info(
          "expert load balancer, before step {}{}: no tokens since the last rebalance, "
          "placement kept",
          step, why);
    }
    at_rebalance_ = totals_;
  }
  publish();
}

RebalanceResult ExpertLoadBalancer::rebalance(const ExpertLoad& load) {
  TRI_CHECK(ep_ != nullptr, "rebalancing experts needs expert parallelism (--ep N)");
  const auto t0 = std::chrono::steady_clock::now();
  RebalanceResult result;
  std::vector<ExpertPlacement> next = ep_->placements();
  double before = 0, after = 0;
  const std::vector<LayerPlacementPlan> plans = plan_placements(load, shape_);
  for (const LayerPlacementPlan& plan : plans) {
    const std::vector<double> layer_load = load.layer_load(plan.layer);
    const ExpertPlacement& now = ep_->placement(plan.layer);
    const double now_max = busiest_over_mean(now, layer_load);
    const double plan_max = max_over_mean(plan.rank_load);
    before += now_max;
    // Moving experts costs a load from the checkpoint: only for a less loaded busiest rank.
    if (plan_max < now_max * (1 - 1e-9)) {
      next[plan.layer] = keep_in_place(plan.placement, now, shape_.n_nodes);
      after += plan_max;
    } else {
      after += now_max;
    }
  }
  const double layers = double(std::max<size_t>(plans.size(), 1));
  result.imbalance_before = before / layers;
  result.imbalance_after = after / layers;
  const uint64_t mine = fingerprint(next);
  std::vector<uint64_t> all(ep_->size());
  ep_->comm().all_gather(&mine, sizeof(mine), all.data(), "expert placement plan");
  for (int r = 0; r < ep_->size(); ++r)
    TRI_CHECK(all[r] == mine,
              "rank {} planned other expert placements than rank {} from the same counts; the "
              "ranks must run the same build",
              r, ep_->rank());
  if (fingerprint(ep_->placements()) == mine) {
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;
  }
  for (int l : load.moe_layers())
    for (int r = 0; r < ep_->size(); ++r) {
      const std::vector<int>& held = ep_->placement(l).experts_of(r);
      for (int e : next[l].experts_of(r))
        result.copies_moved += std::find(held.begin(), held.end(), e) == held.end() ? 1 : 0;
    }
  result.loaded_here = apply_placements(model_, *ep_, std::move(next), source_);
  result.applied = true;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++rebalances_;
  copies_moved_ += result.copies_moved;
  rebalance_seconds_ += result.seconds;
  return result;
}

std::string ExpertLoadBalancer::request_rebalance() {
  if (cannot_rebalance_.empty()) ep_->request_rebalance();
  return cannot_rebalance_;
}

void ExpertLoadBalancer::finish() {
  if (ep_)
    sum_counts();
  else
    totals_ = local_counts();
  publish();
  if (options_.load_file.empty() || (ep_ && ep_->rank() != 0)) return;
  totals_.write(options_.load_file);
  spdlog::info("expert load of {} tokens written to {}", totals_.tokens(),
               options_.load_file.string());
}

void ExpertLoadBalancer::publish() {
  ExpertLoadSummary s;
  s.tokens = totals_.tokens();
  s.assignments = totals_.assignments();
  for (int l : totals_.moe_layers())
    s.expert_imbalance.emplace_back(l, max_over_mean(totals_.layer_load(l)));
  if (ep_) {
    const ExpertLoad window = totals_.since(at_rebalance_);
    for (int l : window.moe_layers())
      s.rank_imbalance.emplace_back(l, busiest_over_mean(ep_->placement(l), window.layer_load(l)));
  }
  s.rebalances = rebalances_;
  s.experts_loaded = copies_moved_;
  s.rebalance_seconds = rebalance_seconds_;
  std::lock_guard lock(mutex_);
  published_ = totals_;
  summary_ = std::move(s);
}

ExpertLoad ExpertLoadBalancer::totals() const {
  std::lock_guard lock(mutex_);
  return published_;
}

ExpertLoadSummary ExpertLoadBalancer::summary() const {
  std::lock_guard lock(mutex_);
  return summary_;
}

}  // namespace trident
