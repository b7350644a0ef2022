#include "serve/metrics.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"

namespace trident {

namespace {

std::string number(double v) { return fmt::format("{}", v); }

void header(std::string& out, const std::string& name, const char* type, const std::string& help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void single(std::string& out, const std::string& name, const char* type, const std::string& help,
            double value) {
  header(out, name, type, help);
  out += fmt::format("{} {}\n", name, number(value));
}

template <class Key>
void labelled(std::string& out, const std::string& name, const std::string& help,
              const std::string& label, const std::map<Key, uint64_t>& values) {
  header(out, name, "counter", help);
  for (const auto& [key, v] : values)
    out += fmt::format("{}{{{}=\"{}\"}} {}\n", name, label, key, v);
}

void per_layer(std::string& out, const std::string& name, const std::string& help,
               const std::vector<std::pair<int, double>>& values) {
  if (values.empty()) return;
  header(out, name, "gauge", help);
  for (const auto& [layer, v] : values)
    out += fmt::format("{}{{layer=\"{}\"}} {}\n", name, layer, number(v));
}

// A few series per MoE layer, not one per expert: DeepSeek-V3 has 58 x 256 of those.
void render_expert_load(std::string& out, const ExpertLoadSummary& s) {
  single(out, "trident_moe_tokens_total", "counter",
         "Tokens through the MoE layers (each token once, however many layers).",
         double(s.tokens));
  single(out, "trident_expert_routed_tokens_total", "counter",
         "Tokens routed to routed experts, summed over experts and MoE layers (top-k per token "
         "per layer).",
         double(s.assignments));
  per_layer(out, "trident_expert_load_imbalance",
            "The busiest routed expert's tokens over the mean expert's, per MoE layer, since "
            "start.",
            s.expert_imbalance);
  per_layer(out, "trident_expert_rank_load_imbalance",
            "The busiest rank's expected expert load over the mean rank's under the placement in "
            "use, per MoE layer, since the last rebalance.",
            s.rank_imbalance);
  single(out, "trident_eplb_rebalances_total", "counter",
         "Expert placements applied while serving.", double(s.rebalances));
  single(out, "trident_eplb_experts_moved_total", "counter",
         "Expert copies loaded onto ranks that did not hold them, by rebalances.",
         double(s.experts_loaded));
  single(out, "trident_eplb_rebalance_seconds_total", "counter",
         "Time rebalances took (planning, loading experts, switching).", s.rebalance_seconds);
}

std::vector<double> token_buckets() {
  return {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  TRI_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()), "histogram bucket bounds must ascend");
}

void Histogram::observe(double value) {
  size_t b = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[b];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  header(out, name, "histogram", help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, number(bounds_[i]), cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, number(sum_), name, count_);
}

ServerMetrics::ServerMetrics()
    : ttft_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      tpot_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      e2e_({0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      prompt_len_(token_buckets()),
      completion_len_(token_buckets()) {}

void ServerMetrics::request_started(const std::string& endpoint) {
  std::lock_guard lock(mutex_);
  ++started_[endpoint];
}

void ServerMetrics::request_finished(const RequestRecord& r) {
  std::lock_guard lock(mutex_);
  ++finished_[r.finish_reason];
  prompt_tokens_ += r.prompt_tokens;
  completion_tokens_ += r.completion_tokens;
  if (r.ttft_s >= 0) ttft_.observe(r.ttft_s);
  if (r.tpot_s >= 0) tpot_.observe(r.tpot_s);
  e2e_.observe(r.e2e_s);
  prompt_len_.observe(r.prompt_tokens);
  completion_len_.observe(r.completion_tokens);
}

void ServerMetrics::error_response(int status) {
  std::lock_guard lock(mutex_);
  ++errors_[status];
}

std::string ServerMetrics::render(const ServingStats& e) const {
  std::string out;
  std::lock_guard lock(mutex_);
  labelled(out, "trident_requests_total", "Generation requests accepted, by endpoint.", "endpoint",
           started_);
  labelled(out, "trident_requests_finished_total",
           "Generation requests finished, by finish reason.", "finish_reason", finished_);
  labelled(out, "trident_request_errors_total", "Requests answered with an error, by HTTP status.",
           "status", errors_);
  single(out, "trident_prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
         double(prompt_tokens_));
  single(out, "trident_generation_tokens_total", "counter",
         "Tokens generated for finished requests.", double(completion_tokens_));
  ttft_.render(out, "trident_time_to_first_token_seconds",
               "Time from a request's arrival to its first generated token.");
  tpot_.render(out, "trident_time_per_output_token_seconds",
               "Mean time per generated token after the first, per request.");
  e2e_.render(out, "trident_e2e_request_latency_seconds", "Time from arrival to the last token.");
  prompt_len_.render(out, "trident_request_prompt_tokens", "Prompt length of finished requests.");
  completion_len_.render(out, "trident_request_generation_tokens",
                         "Generated length of finished requests.");

  const SchedulerStats& s = e.scheduler;
  single(out, "trident_queue_length", "gauge", "Requests waiting to be scheduled.", e.queued);
  single(out, "trident_requests_running", "gauge", "Requests in the running batch.", s.running);
  single(out, "trident_requests_in_flight", "gauge", "Requests accepted and not yet ended.",
         e.in_flight);
  single(out, "trident_kv_pages_total", "gauge", "KV cache pages (64 tokens each).",
         e.kv_pages_total);
  single(out, "trident_kv_pages_used", "gauge", "KV cache pages in use, prefix cache included.",
         e.kv_pages_used);
  single(out, "trident_kv_pages_cached", "gauge", "KV cache pages held by the prefix cache.",
         e.kv_pages_cached);
  single(out, "trident_kv_utilization_ratio", "gauge", "KV pages in use over all pages.",
         e.kv_utilization);
  single(out, "trident_kv_fragmentation_ratio", "gauge",
         "Allocated but unused KV token slots over allocated slots.", e.kv_fragmentation);
  single(out, "trident_prefix_cache_queried_tokens_total", "counter",
         "Prompt tokens looked up in the prefix cache.", double(s.prompt_tokens));
  single(out, "trident_prefix_cache_hit_tokens_total", "counter",
         "Prompt tokens served from the prefix cache instead of computed.",
         double(s.cached_prompt_tokens));
  single(out, "trident_prefix_cache_hit_rate", "gauge",
         "Prefix cache hit tokens over queried tokens since start.",
         s.prompt_tokens ? double(s.cached_prompt_tokens) / double(s.prompt_tokens) : 0.0);
  single(out, "trident_prefix_cache_evicted_pages_total", "counter",
         "Cached KV pages no request used, evicted least recently used first for lack of free "
         "pages.",
         double(s.evicted_pages));
  single(out, "trident_preemptions_total", "counter",
         "Running requests preempted (pages freed, recomputed later) for lack of KV pages.",
         double(s.preemptions));
  single(out, "trident_engine_steps_total", "counter", "Model steps run.", double(s.steps));
  single(out, "trident_engine_computed_tokens_total", "counter",
         "Tokens run through the model, recomputation included.", double(s.computed_tokens));
  single(out, "trident_engine_generated_tokens_total", "counter",
         "Tokens sampled by the engine, cancelled requests included.", double(e.generated_tokens));
  if (!e.ranks.empty()) {
    auto per_rank = [&](const std::string& name, const char* type, const std::string& help,
                        auto value) {
      header(out, name, type, help);
      for (size_t r = 0; r < e.ranks.size(); ++r)
        out += fmt::format("{}{{rank=\"{}\"}} {}\n", name, r, value(e.ranks[r]));
    };
    per_rank("trident_rank_requests_total", "counter",
             "Requests given to each data-parallel attention rank.",
             [](const RankServingStats& r) { return r.requests; });
    per_rank("trident_rank_requests_running", "gauge", "Requests running on each rank.",
             [](const RankServingStats& r) { return r.running; });
    per_rank("trident_rank_requests_waiting", "gauge", "Requests waiting on each rank.",
             [](const RankServingStats& r) { return r.waiting; });
    per_rank("trident_rank_queued_tokens", "gauge",
             "Tokens of each rank's requests not yet computed.",
             [](const RankServingStats& r) { return r.queued_tokens; });
    per_rank("trident_rank_kv_pages_used", "gauge", "KV pages in use on each rank.",
             [](const RankServingStats& r) { return r.kv_pages_used; });
  }
  if (expert_load_) render_expert_load(out, expert_load_());
  return out;
}

}  // namespace trident
