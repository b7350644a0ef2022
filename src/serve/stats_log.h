// Logs the serving engine's figures at an interval while it has work: throughput, the queue, KV
// pool use and fragmentation, prefix-cache hits and preemptions (the figures /metrics exports,
// for whoever reads the log instead).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "runtime/serving_engine.h"

namespace trident {

class StatsLog {
 public:
  // interval <= 0: logs nothing.
  StatsLog(const ServingEngine& engine, std::chrono::duration<double> interval);
  ~StatsLog();
  StatsLog(const StatsLog&) = delete;
  StatsLog& operator=(const StatsLog&) = delete;

 private:
  void run(std::chrono::duration<double> interval);

  const ServingEngine& engine_;
  std::mutex mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace trident
