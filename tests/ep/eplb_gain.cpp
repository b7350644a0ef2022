#include "eplb_gain.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cache/kv_page_pool.h"
#include "model/deepseek_v3.h"
#include "parallel/expert_load_balancer.h"
#include "parallel/expert_parallel.h"
#include "runtime/step_builder.h"
#include "tiny_moe_model.h"

namespace trident::testing {

namespace {

struct Phase {
  std::vector<int64_t> received;  // tokens each rank's experts received
  double step_seconds = 0;        // mean over the timed steps, as rank 0 saw them
};

std::string list(const std::vector<int64_t>& v) { return fmt::format("{}", fmt::join(v, " ")); }

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
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto phase = [&]() {
    step();  // warm-up (and, after the request, the step the rebalance comes before)
    const int64_t before = ep.tokens_received();
    Phase p;
    for (int s = 0; s < a.steps; ++s) p.step_seconds += step() / a.steps;
    const int64_t mine = ep.tokens_received() - before;
    p.received.resize(R);
    group.comm().all_gather(&mine, sizeof(mine), p.received.data(), "tokens received");
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
  std::printf("before: tokens received per rank [%s], busiest %.2fx the mean, step %.1f ms\n",
              list(before.received).c_str(), busiest_over_mean(before.received),
              before.step_seconds * 1e3);
  std::printf("after:  tokens received per rank [%s], busiest %.2fx the mean, step %.1f ms\n",
              list(after.received).c_str(), busiest_over_mean(after.received),
              after.step_seconds * 1e3);
  std::printf("step time after / before: %.2f; rebalances %lld, expert copies moved %lld\n",
              after.step_seconds / before.step_seconds, (long long)balancer.summary().rebalances,
              (long long)balancer.summary().experts_loaded);
  std::fflush(stdout);
}

}  // namespace trident::testing
