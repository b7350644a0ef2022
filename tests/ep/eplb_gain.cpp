#include "eplb_gain.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/stage_timer.h"
#include "cache/kv_page_pool.h"
#include "model/deepseek_v3.h"
#include "parallel/expert_load_balancer.h"
#include "parallel/expert_parallel.h"
#include "runtime/step_builder.h"
#include "tiny_moe_model.h"

namespace trident::testing {

namespace {

struct Phase {
  std::vector<int64_t> received;       // tokens each rank's experts received
  std::vector<double> expert_seconds;  // per rank, its experts' time per step
  double step_seconds = 0;             // mean over the timed steps, as rank 0 saw them
};

// Stages timed in this thread's CPU time: what a rank computes, without its waits for the other
// ranks and without the time other processes take from a shared machine's cores (the CPU
// backend computes in the calling thread with OMP_NUM_THREADS=1).
class ThreadCpuTimer final : public StageTimer {
 public:
  void mark(Stage stage, int layer) override {
    const double now = cpu_seconds();
    if (!marks_.empty()) marks_.back().seconds = now - started_;
    marks_.push_back({stage, layer, 0});
    started_ = now;
  }
  std::vector<Interval> finish() override {
    if (!marks_.empty()) marks_.back().seconds = cpu_seconds() - started_;
    return std::exchange(marks_, {});
  }

 private:
  static double cpu_seconds() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  }
  std::vector<Interval> marks_;
  double started_ = 0;
};

std::string list(const std::vector<int64_t>& v) { return fmt::format("{}", fmt::join(v, " ")); }

std::string list_ms(const std::vector<double>& seconds) {
  std::vector<std::string> ms;
  for (double s : seconds) ms.push_back(fmt::format("{:.0f}", s * 1e3));
  return fmt::format("{}", fmt::join(ms, " "));
}

double busiest_over_mean(const std::vector<int64_t>& v) {
  std::vector<double> d(v.begin(), v.end());
  return max_over_mean(d);
}

}  // namespace

void run_eplb_gain(const EplbGainArgs& a, RankGroup& group) {
  const int R = group.info().size, me = group.info().rank;
  std::unique_ptr<Backend> backend = make_cpu_backend();
  TinyMoeSpec spec;
  spec.moe_intermediate = a.moe_intermediate;
  const ModelConfig base = tiny_moe_config(spec);
  // Rank 0's own block (not the redundant copy that follows it).
  spec.favoured_experts = ExpertPlacement::contiguous(base.n_routed_experts, R).experts_of(0);
  const ModelConfig config = tiny_moe_config(spec);
  ExpertParallel ep(group.comm(), *backend, config, contiguous_placements(config, R, a.redundant),
                    {});
  DeepseekV3 model(
      config, tiny_moe_weights(config, spec, [&](int l, int e) { return ep.holds_expert(l, e); }),
      *backend);
  model.set_routed_experts_hook(&ep);
  ep.wait_for_ranks_loaded();
  ExpertLoadBalancer balancer(
      model, *backend, &ep,
      [&](int layer, int expert) { return tiny_moe_expert(config, spec, layer, expert); }, {});
  ThreadCpuTimer timer;
  ep.set_stage_timer(&timer);

  const int pages = pages_for_tokens(a.tokens, AttentionMeta::kPageSize);
  KvCache cache = make_kv_cache(*backend, config, pages);
  std::vector<int32_t> page_ids(pages);
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::mt19937 rng(100 + me);
  // A fresh prompt each step, prefilled into the same pages.
  auto step = [&]() {
    std::vector<int32_t> tokens(a.tokens);
    for (int32_t& t : tokens) t = int32_t(rng() % config.vocab_size);
    ep.begin_step(a.tokens, true);
    StepChunk chunk{&tokens, 0, a.tokens, &page_ids, true};
    StepInput in = upload_step(*backend, build_step({chunk}));
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> logits(config.vocab_size);
    backend->to_host(model.forward(in, cache), logits.data());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double experts = 0;
    for (const StageTimer::Interval& i : timer.finish())
      if (i.stage == Stage::Experts) experts += i.seconds;
    return std::pair{seconds, experts};
  };
  auto phase = [&]() {
    step();  // warm-up (and, after the request, the step the rebalance comes before)
    const int64_t before = ep.tokens_received();
    Phase p;
    double experts = 0;
    for (int s = 0; s < a.steps; ++s) {
      const auto [seconds, expert_seconds] = step();
      p.step_seconds += seconds / a.steps;
      experts += expert_seconds / a.steps;
    }
    const int64_t mine = ep.tokens_received() - before;
    p.received.resize(R);
    group.comm().all_gather(&mine, sizeof(mine), p.received.data(), "tokens received");
    p.expert_seconds.resize(R);
    group.comm().all_gather(&experts, sizeof(experts), p.expert_seconds.data(), "expert time");
    return p;
  };

  const Phase before = phase();
  if (me == 0) balancer.request_rebalance();
  const Phase after = phase();
  balancer.finish();
  ep.finish();
  if (me != 0) return;
  std::printf(
      "eplb gain: %d CPU ranks, %d experts (top-%d, intermediate %d), %d redundant, %d tokens "
      "per rank per step, every token routed to rank 0's experts\n",
      R, config.n_routed_experts, config.num_experts_per_tok, config.moe_intermediate_size,
      a.redundant, a.tokens);
  for (const auto& [name, p] : {std::pair{"before:", &before}, std::pair{"after: ", &after}})
    std::printf(
        "%s tokens received per rank [%s], busiest %.2fx the mean; experts' CPU time per rank "
        "[%s] ms, busiest %.0f ms; step %.0f ms\n",
        name, list(p->received).c_str(), busiest_over_mean(p->received),
        list_ms(p->expert_seconds).c_str(),
        *std::max_element(p->expert_seconds.begin(), p->expert_seconds.end()) * 1e3,
        p->step_seconds * 1e3);
  std::printf(
      "after / before: busiest rank's expert CPU time %.2f, step time %.2f; rebalances %lld, "
      "expert copies moved %lld\n",
      *std::max_element(after.expert_seconds.begin(), after.expert_seconds.end()) /
          *std::max_element(before.expert_seconds.begin(), before.expert_seconds.end()),
      after.step_seconds / before.step_seconds, (long long)balancer.summary().rebalances,
      (long long)balancer.summary().experts_loaded);
  std::fflush(stdout);
}

}  // namespace trident::testing
