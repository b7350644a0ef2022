#include "serve/stats_log.h"

#include <spdlog/spdlog.h>

namespace trident {

StatsLog::StatsLog(const ServingEngine& engine, std::chrono::duration<double> interval)
    : engine_(engine) {
  if (interval.count() > 0) thread_ = std::thread([this, interval] { run(interval); });
}

StatsLog::~StatsLog() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stop_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void StatsLog::run(std::chrono::duration<double> interval) {
  using Clock = std::chrono::steady_clock;
  ServingStats last = engine_.stats();
  auto last_time = Clock::now();
  std::unique_lock lock(mutex_);
  while (!stop_.wait_for(lock, interval, [&] { return stopping_; })) {
    const ServingStats s = engine_.stats();
    const auto now = Clock::now();
    const SchedulerStats &a = s.scheduler, &b = last.scheduler;
    // Quiet while idle: nothing ran and nothing waits.
    if (s.in_flight == 0 && a.steps == b.steps) continue;
    const double seconds = std::chrono::duration<double>(now - last_time).count();
    const int64_t queried = a.prompt_tokens - b.prompt_tokens;
    spdlog::info(
        "{} running, {} queued; {:.1f} tokens/s computed, {:.1f} generated; KV {} of {} pages "
        "({:.1f}%, {} cached), fragmentation {:.2f}%; prefix cache hits {:.1f}% of {} prompt "
        "tokens; {} preemptions",
        a.running, s.queued, double(a.computed_tokens - b.computed_tokens) / seconds,
        double(s.generated_tokens - last.generated_tokens) / seconds, s.kv_pages_used,
        s.kv_pages_total, 100 * s.kv_utilization, s.kv_pages_cached, 100 * s.kv_fragmentation,
        queried ? 100.0 * double(a.cached_prompt_tokens - b.cached_prompt_tokens) / queried : 0.0,
        queried, a.preemptions - b.preemptions);
    last = s;
    last_time = now;
  }
}

}  // namespace trident
