// The serving engine: one thread that owns the model and runs steps for many requests at once.
// Client threads submit requests and read their tokens from a RequestStream; the engine thread
// takes new requests and cancellations between steps, asks the scheduler what runs next, runs
// the step, samples each finished row and pushes the tokens out.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/engine.h"
#include "runtime/request.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"

namespace trident {

// What the serving engine runs steps on: the model with its KV cache, or a stand-in in tests.
class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual int vocab_size() const = 0;
  // Runs one step (host tensors, as build_step makes them) and returns its logits [L, vocab] in
  // host memory, valid until the next call.
  virtual const float* forward(const StepInput& step) = 0;
};

// The Engine's model, cache and backend as a StepModel.
class EngineStepModel : public StepModel {
 public:
  explicit EngineStepModel(Engine& engine) : engine_(engine) {}
  int vocab_size() const override { return engine_.config().vocab_size; }
  const float* forward(const StepInput& step) override;

 private:
  Engine& engine_;
  std::vector<float> logits_;
};

struct ServingOptions {
  SchedulerOptions scheduler;
  int max_requests = 256;  // submitted and not yet ended; submit refuses more
  std::vector<int32_t> eos_token_ids;
};

struct ServingStats {
  SchedulerStats scheduler;
  int queued = 0;  // submitted, not yet running (the scheduler's waiting plus new arrivals)
  int in_flight = 0;
  int kv_pages_total = 0;
  int kv_pages_used = 0;
  int kv_pages_cached = 0;  // held by the prefix cache
  double kv_utilization = 0;
  double kv_fragmentation = 0;
  int64_t generated_tokens = 0;
};

class ServingEngine {
 public:
  // The pool is the one whose pages the model's KV cache holds; both must outlive the engine.
  ServingEngine(StepModel& model, KvPagePool& pool, const ServingOptions& options);
  ~ServingEngine();
  ServingEngine(const ServingEngine&) = delete;
  ServingEngine& operator=(const ServingEngine&) = delete;

  // Queues a request. Null when max_requests are already in flight. Throws trident::Error for a
  // request the engine cannot run (empty prompt, prompt not shorter than the context, ...).
  std::shared_ptr<RequestStream> submit(GenerationRequest request);
  ServingStats stats() const;
  const ServingOptions& options() const { return options_; }
  // Ends every request still in flight ("cancelled") and stops the engine thread.
  void stop();

 private:
  struct Active {
    std::shared_ptr<Sequence> seq;
    std::shared_ptr<RequestStream> stream;
    GenerationRequest request;
    Sampler sampler;
  };

  void loop();
  void take_new_requests(std::vector<std::unique_ptr<Active>> arrivals);
  void drop_cancelled();
  void run_step(const ScheduledStep& step);
  void emit(Active& active, const float* logits);
  // Ends a request. Its client hears of it from deliver_ends(), after the stats that no longer
  // count it are published: /metrics read right after a response agrees with it.
  void end(Active& active, RequestEnd end);
  void publish_stats();
  void deliver_ends();

  StepModel& model_;
  KvPagePool& pool_;
  ServingOptions options_;
  Scheduler scheduler_;  // engine thread only

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Active>> inbox_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  std::atomic<int> in_flight_{0};

  std::unordered_map<uint64_t, std::unique_ptr<Active>> active_;  // engine thread only
  std::vector<std::pair<std::shared_ptr<RequestStream>, RequestEnd>> ended_;  // engine thread only
  int64_t generated_tokens_ = 0;

  mutable std::mutex stats_mutex_;
  ServingStats stats_;

  std::thread thread_;
};

// The n most likely tokens of a logits row with their log-softmax, most likely first.
std::vector<std::pair<int32_t, float>> top_logprobs(const float* logits, int vocab, int n);

}  // namespace trident
