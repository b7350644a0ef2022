// Server metrics in the Prometheus text format (version 0.0.4): request and token counters,
// latency histograms, the engine's queue, KV pool and prefix-cache gauges, and the routed
// experts' load. Thread-safe: handler threads record, /metrics renders.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/expert_load.h"
#include "runtime/serving_engine.h"

namespace trident {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // The _bucket (cumulative, with +Inf), _sum and _count lines.
  void render(std::string& out, const std::string& name, const std::string& help) const;
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// What one finished request adds to the metrics.
struct RequestRecord {
  std::string endpoint;       // "completions" or "chat_completions"
  std::string finish_reason;  // "stop", "length", "cancelled", "error"
  int prompt_tokens = 0;
  int completion_tokens = 0;
  double ttft_s = -1;  // time to first token; < 0: no token came
  double tpot_s = -1;  // mean time per output token after the first; < 0: fewer than 2 tokens
  double e2e_s = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();
  void request_started(const std::string& endpoint);
  void request_finished(const RequestRecord& r);
  // An error response (4xx or 5xx).
  void error_response(int status);
  // Where the expert load series come from (unset: none are shown).
  void set_expert_load(std::function<ExpertLoadSummary()> source) {
    expert_load_ = std::move(source);
  }

  std::string render(const ServingStats& engine) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> started_;   // by endpoint
  std::map<std::string, uint64_t> finished_;  // by finish reason
  std::map<int, uint64_t> errors_;            // by status
  uint64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  Histogram ttft_, tpot_, e2e_, prompt_len_, completion_len_;
  std::function<ExpertLoadSummary()> expert_load_;
};

}  // namespace trident
