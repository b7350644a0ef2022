// One rank of the multi-rank tests, started by mpirun (trident_ep_tests does that). Every rank
// runs a model twice: with all experts here (the reference: what a single rank computes) and
// with the experts spread over the ranks, each rank loading only its own. Each rank has its own
// batch of sequences (attention is data-parallel): a batched prefill, then greedy decode steps
// of one token per sequence; logits and tokens are compared at every step.
//
// The model is a checkpoint directory (--model: a golden fixture, whose prompts rank r takes
// round-robin) or a small random model built in memory (--prompt-tokens: one sequence per rank of
// that many tokens, 0 for none). Rank r decodes --decode-steps + r tokens, so ranks finish at
// different times and idle while others still run. A fault can be injected into one rank.
//
// --poison-other-experts: the expert-parallel model loads from a copy of the checkpoint in which
// the routed experts this rank does not hold are poison (poisoned_checkpoint.h), so reading any
// of their bytes fails the run.
//
// --placement FILE starts from a placement file instead of contiguous blocks; --eplb-interval N
// moves experts every N steps while the steps go on (the expert load balancer), loading them
// from the checkpoint or making them as the random model does. --eplb-gain runs the expert load
// balancer's benchmark instead (eplb_gain.h).
#include <signal.h>
#include <unistd.h>

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "backend/backend.h"
#include "cache/kv_page_pool.h"
#include "model/checkpoint.h"
#include "model/deepseek_v3.h"
#include "parallel/expert_load_balancer.h"
#include "parallel/expert_parallel.h"
#include "parallel/placement_file.h"
#include "parallel/rank_group.h"
#include "eplb_gain.h"
#include "poisoned_checkpoint.h"
#include "runtime/step_builder.h"
#include "tiny_moe_model.h"

namespace {

using namespace trident;
namespace fs = std::filesystem;

struct Args {
  std::string model;                      // checkpoint directory; empty: the random model
  std::vector<int> prompt_tokens = {12};  // random model: per rank; missing ranks take the last
  int decode_steps = 3;
  bool fp8 = false;
  std::string payload = "auto";
  bool skew = false;
  int redundant = 0;
  std::string placement;  // a placement file; empty: contiguous blocks
  int eplb_interval = 0;
  bool eplb_gain = false;
  testing::EplbGainArgs gain;
  // Each row's largest logit error over the spread of the reference row's logits.
  double tolerance = 1e-4;         // every row
  double median_tolerance = 1e-4;  // the median row
  int timeout_ms = 30000;
  bool poison_other_experts = false;
  bool load_every_expert = false;  // with poisoned experts: must fail
  int64_t max_exchange_tokens = 0;
  int load_timeout_ms = 60000;
  std::string fault = "none";  // exit, kill, hang, or hang-loading
  int fault_rank = 1;
  int fault_step = 1;
  int fault_layer = 2;
};

// Passes each MoE layer on to expert parallelism, failing first at the chosen step and layer,
// while the other ranks wait for this one in that layer's dispatch.
class FaultyRank final : public RoutedExpertsHook {
 public:
  FaultyRank(const Args& a, int rank, RoutedExpertsHook& inner)
      : a_(a), rank_(rank), inner_(inner) {}
  void set_step(int step) { step_ = step; }

  void moe_experts(int layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                   const ExpertWeights& experts, Tensor& out) override {
    if (a_.fault != "none" && rank_ == a_.fault_rank && step_ == a_.fault_step &&
        layer == a_.fault_layer) {
      std::fprintf(stderr, "rank %d: injecting fault '%s' at step %d, layer %d\n", rank_,
                   a_.fault.c_str(), step_, layer);
      std::fflush(stderr);
      if (a_.fault == "exit") std::exit(3);
      if (a_.fault == "kill") raise(SIGKILL);
      if (a_.fault == "hang")
        for (;;) pause();
    }
    inner_.moe_experts(layer, x, topk_ids, topk_weights, experts, out);
  }

 private:
  const Args& a_;
  int rank_;
  RoutedExpertsHook& inner_;
  int step_ = 0;
};

// This rank's prompts: the fixture's (golden.json) round-robin over ranks, or random ones.
std::vector<std::vector<int32_t>> prompts_of_rank(const Args& a, const ModelConfig& config,
                                                  int rank, int n_ranks) {
  std::vector<std::vector<int32_t>> mine;
  if (!a.model.empty() && fs::exists(fs::path(a.model) / "golden.json")) {
    std::ifstream f(fs::path(a.model) / "golden.json");
    auto all = nlohmann::json::parse(f).at("prompts").get<std::vector<std::vector<int32_t>>>();
    for (size_t i = rank; i < all.size(); i += n_ranks) mine.push_back(all[i]);
    return mine;
  }
  const int n = a.prompt_tokens[std::min<size_t>(rank, a.prompt_tokens.size() - 1)];
  if (n == 0) return mine;
  std::mt19937 rng(1000 + rank);
  std::vector<int32_t> p(n);
  for (int32_t& t : p) t = int32_t(rng() % config.vocab_size);
  mine.push_back(p);
  return mine;
}

struct Sequence {
  std::vector<int32_t> tokens, pages;
  int cached = 0;
};

// Returns whether every step matched the reference.
bool run(const Args& a, RankGroup& group) {
  const int R = group.info().size, r = group.info().rank;
  std::unique_ptr<Backend> backend = make_cpu_backend();
  testing::TinyMoeSpec spec;
  spec.fp8 = a.fp8;
  std::unique_ptr<Checkpoint> ckpt;
  ModelConfig config = testing::tiny_moe_config(spec);
  if (!a.model.empty()) {
    ckpt = std::make_unique<Checkpoint>(Checkpoint::open(a.model));
    config = ModelConfig::from_file(fs::path(a.model) / "config.json");
  }
  std::vector<ExpertPlacement> placements =
      initial_placements(config, R, a.redundant, a.placement);
  if (a.skew) spec.favoured_experts = placements[0].experts_of(0);

  ExpertParallelOptions options;
  options.payload = a.payload == "fp8"          ? PayloadChoice::Fp8
                    : a.payload == "activation" ? PayloadChoice::Activation
                                                : PayloadChoice::Auto;
  options.max_tokens_per_exchange = a.max_exchange_tokens;
  options.load_timeout = std::chrono::milliseconds(a.load_timeout_ms);
  ExpertParallel ep(group.comm(), *backend, config, placements, options);
  auto holds = [&](int l, int e) { return ep.holds_expert(l, e); };
  LoadOptions only_mine;
  only_mine.holds_expert = holds;
  DeepseekV3 reference(
      config,
      ckpt ? load_weights(*ckpt, config, *backend) : testing::tiny_moe_weights(config, spec),
      *backend);
  std::string poisoned;  // what the poisoned copy holds, for the report
  fs::path poisoned_dir;
  if (a.poison_other_experts) {
    TRI_CHECK(ckpt != nullptr, "--poison-other-experts needs --model");
    poisoned_dir = fs::temp_directory_path() / fmt::format("trident-ep-{}-rank{}", getpid(), r);
    // Experts of layers past the model's (multi-token prediction) are never read either.
    testing::PoisonedCheckpoint made = testing::write_poisoned_checkpoint(
        a.model, poisoned_dir,
        [&](int l, int e) { return l < config.num_hidden_layers && holds(l, e); });
    ckpt = std::make_unique<Checkpoint>(Checkpoint::open(poisoned_dir));
    poisoned = fmt::format(", {} of {} expert shards poisoned", made.poisoned_shards,
                           made.expert_shards);
  }
  std::optional<DeepseekV3> model;
  try {
    model.emplace(config,
                  ckpt ? load_weights(*ckpt, config, *backend,
                                      a.load_every_expert ? LoadOptions{} : only_mine)
                       : testing::tiny_moe_weights(config, spec, holds),
                  *backend);
  } catch (const std::exception&) {
    if (!poisoned_dir.empty()) fs::remove_all(poisoned_dir);
    throw;
  }
  if (!poisoned_dir.empty()) fs::remove_all(poisoned_dir);
  if (a.fault == "hang-loading" && r == a.fault_rank) {
    std::fprintf(stderr, "rank %d: injecting fault 'hang-loading'\n", r);
    std::fflush(stderr);
    for (;;) pause();
  }
  ep.wait_for_ranks_loaded();
  // Experts a rebalance gives this rank come from the original checkpoint (never the poisoned
  // copy), or are made as the random model makes them.
  std::optional<Checkpoint> source_ckpt;
  if (!a.model.empty()) source_ckpt.emplace(Checkpoint::open(a.model));
  EplbOptions eplb;
  eplb.interval = a.eplb_interval;
  ExpertLoadBalancer balancer(
      *model, *backend, &ep,
      [&](int layer, int expert) {
        return source_ckpt ? load_routed_expert(*source_ckpt, config, *backend, layer, expert)
                           : testing::tiny_moe_expert(config, spec, layer, expert);
      },
      eplb);
  FaultyRank faulty(a, r, ep);
  model->set_routed_experts_hook(&faulty);

  std::vector<Sequence> seqs;
  int n_pages = 0;
  const int steps = a.decode_steps + r;
  for (auto& p : prompts_of_rank(a, config, r, R)) {
    Sequence s{p, {}, 0};
    for (int i = 0; i < pages_for_tokens(int(p.size()) + steps + 1, AttentionMeta::kPageSize); ++i)
      s.pages.push_back(n_pages++);
    seqs.push_back(s);
  }
  KvCache ref_cache = make_kv_cache(*backend, config, std::max(n_pages, 1));
  KvCache ep_cache = make_kv_cache(*backend, config, std::max(n_pages, 1));
  const int V = config.vocab_size;

  std::vector<double> errs;
  bool tokens_match = true;
  int ran = 0, idle = 0;
  for (int step = 0;; ++step) {
    faulty.set_step(step);
    const bool active = !seqs.empty() && step <= steps;
    std::vector<StepChunk> chunks;
    int T = 0;
    if (active)
      for (Sequence& s : seqs) {
        chunks.push_back({&s.tokens, s.cached, int(s.tokens.size()) - s.cached, &s.pages, true});
        T += chunks.back().count;
      }
    StepPlan plan = ep.begin_step(T, active);
    if (plan.stop) break;
    if (T == 0) {
      if (plan.total_tokens > 0) model->idle_step();
      ++idle;
      continue;
    }
    StepInput in = upload_step(*backend, build_step(chunks));
    const size_t rows = seqs.size();
    std::vector<float> got(rows * V), want(rows * V);
    backend->to_host(model->forward(in, ep_cache), got.data());
    backend->to_host(reference.forward(in, ref_cache), want.data());
    for (size_t i = 0; i < rows; ++i) {
      const float* g = &got[i * V];
      const float* w = &want[i * V];
      auto [lo, hi] = std::minmax_element(w, w + V);
      double err = 0;
      for (int v = 0; v < V; ++v) err = std::max(err, double(std::fabs(g[v] - w[v])));
      errs.push_back(err / (*hi - *lo));
      // The greedy tokens agree unless the reference's best two are closer than the error.
      std::vector<float> top(w, w + V);
      std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
      const int32_t best = int32_t(std::max_element(w, w + V) - w);
      if (top[0] - top[1] > 2 * err && std::max_element(g, g + V) - g != best) {
        std::fprintf(stderr, "rank %d step %d sequence %zu: token %d, the reference's %d\n", r,
                     step, i, int(std::max_element(g, g + V) - g), best);
        tokens_match = false;
      }
      seqs[i].cached = int(seqs[i].tokens.size());
      seqs[i].tokens.push_back(best);
    }
    ++ran;
  }
  balancer.finish();
  ep.finish();
  std::sort(errs.begin(), errs.end());
  const double worst = errs.empty() ? 0 : errs.back(),
               median = errs.empty() ? 0 : errs[errs.size() / 2];
  const bool ok = tokens_match && worst <= a.tolerance && median <= a.median_tolerance;
  const ExpertLoadSummary moved = balancer.summary();
  std::printf(
      "rank %d of %d: %zu sequences, %d steps, %d idle steps, %lld tokens received (%s "
      "payload), %lld exchanges%s, %lld rebalances moving %lld expert copies, logit "
      "error/spread median %.2g worst %.2g: %s\n",
      r, R, seqs.size(), ran, idle, (long long)ep.tokens_received(),
      ep.fp8_payload() ? "fp8" : "activation", (long long)ep.exchanges(), poisoned.c_str(),
      (long long)moved.rebalances, (long long)moved.experts_loaded, median, worst,
      ok ? "match" : "MISMATCH");
  std::fflush(stdout);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"one rank of the expert-parallel tests (run under mpirun)"};
  app.add_option("--model", a.model, "Checkpoint directory (default: a random model in memory)");
  app.add_option("--prompt-tokens", a.prompt_tokens, "Random model: prompt length of each rank")
      ->delimiter(',');
  app.add_option("--decode-steps", a.decode_steps, "Decode steps of rank 0 (rank r: + r)");
  app.add_flag("--fp8", a.fp8, "Random model: FP8 weights with block scales");
  app.add_option("--payload", a.payload, "Dispatch payload: auto, fp8 or activation");
  app.add_flag("--skew", a.skew, "Random model: route every token to rank 0's experts");
  app.add_option("--redundant", a.redundant, "Redundant expert copies in all");
  app.add_option("--placement", a.placement, "Start from this expert placement file");
  app.add_option("--eplb-interval", a.eplb_interval, "Rebalance the experts every N steps");
  app.add_flag("--eplb-gain", a.eplb_gain,
               "Instead: time skewed steps before and after a rebalance (with --redundant)");
  app.add_option("--gain-tokens", a.gain.tokens, "--eplb-gain: tokens per rank per step");
  app.add_option("--gain-steps", a.gain.steps, "--eplb-gain: timed steps before and after");
  app.add_option("--gain-moe-intermediate", a.gain.moe_intermediate,
                 "--eplb-gain: the routed experts' intermediate size");
  app.add_option("--tolerance", a.tolerance, "Largest logit error/spread accepted in any row");
  app.add_option("--median-tolerance", a.median_tolerance, "... in the median row");
  app.add_option("--timeout-ms", a.timeout_ms, "Collective timeout");
  app.add_flag("--poison-other-experts", a.poison_other_experts,
               "Load from a copy of --model whose other ranks' experts are poison");
  app.add_flag("--load-every-expert", a.load_every_expert,
               "With --poison-other-experts: load all experts (which must fail)");
  app.add_option("--max-exchange-tokens", a.max_exchange_tokens,
                 "Tokens a rank sends per exchange at most (0: no limit)");
  app.add_option("--load-timeout-ms", a.load_timeout_ms, "How long ranks wait for each other's load");
  app.add_option("--fault", a.fault, "Fault to inject: exit, kill, hang or hang-loading");
  app.add_option("--fault-rank", a.fault_rank, "Rank that fails");
  app.add_option("--fault-step", a.fault_step, "Step at which it fails");
  app.add_option("--fault-layer", a.fault_layer, "MoE layer in which it fails");
  CLI11_PARSE(app, argc, argv);

  std::unique_ptr<RankGroup> group;
  try {
    group = std::make_unique<RankGroup>("cpu", std::chrono::milliseconds(a.timeout_ms));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  bool ok = false;
  try {
    if (a.eplb_gain) {
      a.gain.redundant = a.redundant;
      testing::run_eplb_gain(a.gain, *group);
      return 0;
    }
    ok = run(a, *group);
  } catch (const std::exception& e) {
    group->abort(e.what());
  }
  return ok ? 0 : 1;
}
