// The serving engine: one thread that owns the model and runs steps for many requests at once.
// Client threads submit requests and read their tokens from a RequestStream; the engine thread
// takes new requests and cancellations between steps, asks the scheduler what runs next, runs
// the step, samples each finished row and pushes the tokens out.
//
// Across the ranks of an expert-parallel group (ServingOptions::ranks), attention is data
// parallel: every rank runs a serving engine with its own scheduler and KV pool. Rank 0 takes
// the requests and gives each to the rank with the least load (tokens waiting to be computed plus
// KV pages held); before every step the ranks exchange new requests, cancellations, tokens going
// back to rank 0's clients and their loads (rank_messages.h), then step through the model
// together: a rank with nothing to run joins the other ranks' MoE exchanges.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/engine.h"
#include "runtime/rank_messages.h"
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

  // Where the model samples on its device (GPU): runs the step and draws each logit row's token
  // there, by rows[i], into ids; the logits of the rows listed in host_rows also come back (for
  // logprobs), into host_logits [host_rows.size(), vocab]. Returns false, having done nothing,
  // where the host samples instead (call forward).
  virtual bool forward_sampled(const StepInput& /*step*/, std::span<const SampleRow> /*rows*/,
                               std::span<const int> /*host_rows*/, std::vector<int32_t>& /*ids*/,
                               std::vector<float>& /*host_logits*/) {
    return false;
  }

  // Expert parallelism: every rank, before every step of the group, with the tokens it runs;
  // returns the tokens of all ranks together. Alone: `tokens`.
  virtual int64_t begin_step(int64_t tokens) { return tokens; }
  // A step of the group in which this rank has no tokens: it still serves its experts to the
  // others' tokens in every MoE layer.
  virtual void idle_step() {}
};

// The Engine's model, cache and backend as a StepModel.
class EngineStepModel : public StepModel {
 public:
  explicit EngineStepModel(Engine& engine) : engine_(engine) {}
  int vocab_size() const override { return engine_.config().vocab_size; }
  const float* forward(const StepInput& step) override;
  bool forward_sampled(const StepInput& step, std::span<const SampleRow> rows,
                       std::span<const int> host_rows, std::vector<int32_t>& ids,
                       std::vector<float>& host_logits) override;
  int64_t begin_step(int64_t tokens) override;
  void idle_step() override;

 private:
  Engine& engine_;
  std::vector<float> logits_;
};

struct ServingOptions {
  SchedulerOptions scheduler;
  int max_requests = 256;  // submitted and not yet ended; submit refuses more
  // A request that has not started this long after it came ends as "timeout" (0: it waits as
  // long as it takes). Requests start first come first served, so this bounds everyone's wait.
  std::chrono::duration<double> max_queue_wait{0};
  std::vector<int32_t> eos_token_ids;
  // The data-parallel ranks of an expert-parallel group; null: this engine serves alone. Every
  // rank makes a serving engine with the same options; rank 0 takes the requests.
  Communicator* ranks = nullptr;
  // With ranks, called on the engine thread when the group cannot go on (a rank failed or did
  // not answer, a step threw): every rank takes part in every step, so one rank's failure stops
  // them all. The engine has already ended every request with the error. Unset: logged only.
  std::function<void(const std::string&)> on_group_failure;
};

// One rank's share of the load, as rank 0 last heard it.
struct RankServingStats {
  int64_t requests = 0;  // given to this rank so far
  int64_t running = 0, waiting = 0, queued_tokens = 0, kv_pages_used = 0;
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
  std::vector<RankServingStats> ranks;  // with ranks, on rank 0: per rank; the figures above
                                        // are the sums over ranks
};

class ServingEngine {
 public:
  // The pool is the one whose pages the model's KV cache holds; both must outlive the engine.
  ServingEngine(StepModel& model, KvPagePool& pool, const ServingOptions& options);
  ~ServingEngine();
  ServingEngine(const ServingEngine&) = delete;
  ServingEngine& operator=(const ServingEngine&) = delete;

  // Queues a request. Null when max_requests are already in flight. Throws trident::Error for a
  // request the engine cannot run (empty prompt, prompt not shorter than the context, ...), and
  // on a rank other than 0, which runs only what rank 0 gives it.
  std::shared_ptr<RequestStream> submit(GenerationRequest request);
  ServingStats stats() const;
  const ServingOptions& options() const { return options_; }
  // Ends every request still in flight ("cancelled") and stops the engine thread; with ranks,
  // rank 0's stop stops the whole group.
  void stop();
  // Waits until the engine thread ends (with ranks: rank 0 stopped the group, or it failed),
  // then ends every request still in flight.
  void join();
  // Why the group stopped when it failed; empty otherwise.
  std::string failure() const;

 private:
  struct Active {
    std::shared_ptr<Sequence> seq;
    std::shared_ptr<RequestStream> stream;
    GenerationRequest request;
    Sampler sampler;
    std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
  };

  std::unique_ptr<Active> make_active(uint64_t id, GenerationRequest request,
                                      std::shared_ptr<RequestStream> stream);
  void loop();
  void take_new_requests(std::vector<std::unique_ptr<Active>> arrivals);
  void drop_cancelled();
  // Ends the requests that waited longer than max_queue_wait without starting.
  void drop_overdue();
  void run_step(const ScheduledStep& step);
  // The step's token for a request, with its logits row where the host has it (nullptr: sampled
  // on the device and no logprobs asked for).
  void emit(Active& active, SampledToken token, const float* logits);
  // Ends a request. Its client hears of it from deliver_ends(), after the stats that no longer
  // count it are published: /metrics read right after a response agrees with it.
  void end(Active& active, RequestEnd end);
  void publish_stats();
  void deliver_ends();
  void end_everything(const RequestEnd& why);

  // With ranks (serving_engine_ranks.cpp).
  struct Remote {
    std::shared_ptr<RequestStream> client;
    int rank = 0;
    bool cancel_sent = false;
  };
  void loop_ranked();
  // Rank 0: gives each new request to a rank, and asks ranks to cancel what clients dropped.
  void route(std::vector<std::unique_ptr<Active>> arrivals, RankMessage& out);
  // Other ranks: the tokens and ends that rank 0's clients have not heard of yet.
  void send_back(RankMessage& out);
  void receive(const std::vector<RankMessage>& all);
  RankReport report() const;
  void add_group_stats(ServingStats& s) const;
  void fail_group(const std::string& why);

  StepModel& model_;
  KvPagePool& pool_;
  ServingOptions options_;
  Scheduler scheduler_;  // engine thread only

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Active>> inbox_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  std::atomic<int> in_flight_{0};

  std::unordered_map<uint64_t, std::unique_ptr<Active>> active_;  // engine thread only
  // With ranks, engine thread only.
  std::unordered_map<uint64_t, Remote> remote_;  // rank 0: requests other ranks run
  // Other ranks: the streams of the requests run here for rank 0's clients.
  std::unordered_map<uint64_t, std::shared_ptr<RequestStream>> for_front_;
  std::vector<RankReport> reports_;  // every rank's, from the last exchange
  std::vector<int64_t> in_transit_, pending_;  // prompt tokens given to ranks, not yet reported
  std::vector<int64_t> assigned_;              // requests given to each rank so far
  bool group_busy_ = true;                     // some rank had work at the last exchange
  std::string failure_;                        // guarded by mutex_
  std::vector<std::pair<std::shared_ptr<RequestStream>, RequestEnd>> ended_;  // engine thread only
  int64_t generated_tokens_ = 0;
  std::vector<float> device_logits_;  // logits rows the device sent back for logprobs

  mutable std::mutex stats_mutex_;
  ServingStats stats_;

  std::thread thread_;
};

// The n most likely tokens of a logits row with their log-softmax, most likely first.
std::vector<std::pair<int32_t, float>> top_logprobs(const float* logits, int vocab, int n);

}  // namespace trident
