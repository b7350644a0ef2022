// A generation request as the serving engine takes it (token ids in, token ids out), and the
// channel its tokens come back through: the engine thread pushes, one client thread reads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/sampler.h"

namespace trident {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 16;
  SamplingParams sampling;
  bool logprobs = false;  // each token's logprob is reported
  int top_logprobs = 0;   // alternatives reported with each token's logprob
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // besides the model's end-of-sequence tokens
};

struct TokenEvent {
  int32_t token = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;  // most likely first
};

// How a request ended; `error` is set when it failed.
struct RequestEnd {
  // "stop", "length", "cancelled", "error", or "timeout" (it never started: it waited in the
  // queue longer than the server allows).
  std::string finish_reason;
  std::string error;
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;  // prompt tokens served by the prefix cache
  int completion_tokens = 0;
  int preemptions = 0;
};

class RequestStream {
 public:
  explicit RequestStream(uint64_t id) : id_(id) {}
  uint64_t id() const { return id_; }

  // Engine side.
  void push(TokenEvent event) {
    {
      std::lock_guard lock(mutex_);
      tokens_.push_back(std::move(event));
    }
    ready_.notify_one();
  }
  void end(RequestEnd end) {
    {
      std::lock_guard lock(mutex_);
      end_ = std::move(end);
      ended_ = true;
    }
    ready_.notify_one();
  }
  bool cancelled() const {
    std::lock_guard lock(mutex_);
    return cancelled_;
  }

  // Client side. Waits up to `timeout` for tokens; moves those that came into `out` and returns
  // true once the request has ended and every token was taken (then `end()` tells how).
  template <class Rep, class Period>
  bool wait(std::vector<TokenEvent>& out, std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [&] { return !tokens_.empty() || ended_; });
    while (!tokens_.empty()) {
      out.push_back(std::move(tokens_.front()));
      tokens_.pop_front();
    }
    return ended_;
  }
  RequestEnd ended() const {
    std::lock_guard lock(mutex_);
    return end_;
  }
  // Asks the engine to stop the request and free its pages; it ends as "cancelled" unless it had
  // already ended.
  void cancel() {
    std::lock_guard lock(mutex_);
    cancelled_ = true;
  }

 private:
  const uint64_t id_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<TokenEvent> tokens_;
  RequestEnd end_;
  bool ended_ = false;
  bool cancelled_ = false;
};

}  // namespace trident
