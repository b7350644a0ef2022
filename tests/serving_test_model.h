// The serving engine's test bench: a stand-in model that writes each token id into its KV slot
// and reads the slots back through the page tables (so a wrong page table, or a page freed while
// still in use, changes the tokens it predicts), and helpers to drive requests through it.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <random>
#include <vector>

#include "runtime/serving_engine.h"

namespace trident::serving_test {

using namespace std::chrono_literals;

constexpr int kPage = KvPagePool::kPageSize;
constexpr int kVocab = 97;

inline uint64_t mix(uint64_t h, int32_t token) { return (h ^ uint32_t(token)) * 1099511628211ull; }

// Writes each token id into its KV slot; the logits of a token put all mass on a hash of the
// tokens read back from the slots of positions 0..pos through the sequence's page table.
class PagedHashModel : public StepModel {
 public:
  explicit PagedHashModel(int n_pages) : kv_(int64_t(n_pages) * kPage, -1) {}
  int vocab_size() const override { return kVocab; }

  const float* forward(const StepInput& in) override {
    const AttentionMeta& m = in.meta;
    const int32_t* ids = in.token_ids.ptr<int32_t>();
    for (int t = 0; t < m.n_tokens; ++t) {
      kv_.at(m.slot.ptr<int32_t>()[t]) = ids[t];
      if (m.positions.ptr<int32_t>()[t] == 0) first_tokens.push_back(ids[t]);
    }
    const int L = int(in.logit_rows.numel());
    logits_.assign(int64_t(L) * kVocab, 0.0f);
    for (int r = 0; r < L; ++r) {
      int t = in.logit_rows.ptr<int32_t>()[r];
      int s = m.token_seq.ptr<int32_t>()[t], pos = m.positions.ptr<int32_t>()[t];
      const int32_t* table = m.page_table.ptr<int32_t>() + int64_t(s) * m.max_pages_per_seq;
      uint64_t h = 1469598103934665603ull;
      for (int j = 0; j <= pos; ++j)
        h = mix(h, kv_.at(int64_t(table[j / kPage]) * kPage + j % kPage));
      logits_[int64_t(r) * kVocab + h % kVocab] = 10.0f;
    }
    step_tokens.push_back(m.n_tokens);
    step_seqs.push_back(m.n_seqs);
    if (on_step) on_step();
    return logits_.data();
  }

  std::vector<int> step_tokens, step_seqs;
  std::vector<int32_t> first_tokens;  // of every prefill that starts at position 0, in order
  std::function<void()> on_step;

 private:
  std::vector<int32_t> kv_;
  std::vector<float> logits_;
};

// What PagedHashModel generates for a prompt when nothing goes wrong, computed without pages.
inline std::vector<int32_t> expected_tokens(const std::vector<int32_t>& prompt, int n) {
  std::vector<int32_t> tokens = prompt, out;
  uint64_t h = 1469598103934665603ull;
  size_t hashed = 0;
  while (int(out.size()) < n) {
    for (; hashed < tokens.size(); ++hashed) h = mix(h, tokens[hashed]);
    int32_t next = int32_t(h % kVocab);
    out.push_back(next);
    tokens.push_back(next);
  }
  return out;
}

inline std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
  std::vector<int32_t> p(len);
  for (int32_t& t : p) t = int32_t(rng() % kVocab);
  return p;
}

// Holds the engine thread inside a step until the test opens it, so that what the test does
// (submitting, cancelling) lands between known steps however the threads are scheduled.
class Gate {
 public:
  void wait() {
    std::unique_lock lock(mutex_);
    opened_.wait(lock, [&] { return open_; });
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    opened_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable opened_;
  bool open_ = false;
};

struct Outcome {
  std::vector<int32_t> tokens;
  RequestEnd end;
};

inline Outcome collect(RequestStream& stream, std::chrono::seconds limit = 60s) {
  Outcome o;
  std::vector<TokenEvent> events;
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!stream.wait(events, 50ms)) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "request " << stream.id() << " did not end within " << limit.count() << " s";
      stream.cancel();
      return o;
    }
  }
  for (const TokenEvent& e : events) o.tokens.push_back(e.token);
  o.end = stream.ended();
  return o;
}

inline GenerationRequest greedy(std::vector<int32_t> prompt, int max_new_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new_tokens;
  return r;
}

inline ServingOptions options(int max_context, int step_tokens, int max_running = 64) {
  ServingOptions o;
  o.scheduler.max_context = max_context;
  o.scheduler.step_tokens = step_tokens;
  o.scheduler.max_running = max_running;
  return o;
}

// Every page is free again or held by the prefix cache, and nothing cached is locked.
inline void expect_no_page_held(const KvPagePool& pool, const ServingStats& s) {
  EXPECT_EQ(pool.used_pages(), s.kv_pages_cached);
  EXPECT_EQ(s.scheduler.running, 0);
  EXPECT_EQ(s.in_flight, 0);
}

}  // namespace trident::serving_test
