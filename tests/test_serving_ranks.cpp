// Serving across data-parallel ranks, with ranks played by threads of this process: requests
// spread over the ranks by load and give the tokens one engine gives; every rank takes part in
// every step of the group, an idle one through idle_step; cancellations reach the rank that runs
// the request; a rank that fails stops the others instead of leaving them waiting; and the
// control messages survive their encoding.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "core/error.h"
#include "runtime/rank_messages.h"
#include "runtime/serving_engine.h"
#include "serving_test_model.h"

using namespace trident;
using namespace trident::serving_test;
using namespace std::chrono_literals;

namespace {

// Ranks as threads: all_gather only, which is all serving needs. A rank that does not arrive
// within the timeout, or ranks that arrive at different collectives, fail the collective with
// RankFailure, as the MPI communicator does.
class ThreadRanks {
 public:
  ThreadRanks(int n, std::chrono::milliseconds timeout) : n_(n), timeout_(timeout), slots_(n) {}

  class Comm final : public Communicator {
   public:
    Comm(ThreadRanks& g, int rank) : g_(g), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return g_.n_; }
    Device payload_device() const override { return Device::CPU; }
    std::chrono::milliseconds timeout() const override { return g_.timeout_; }
    void set_timeout(std::chrono::milliseconds) override {}
    void all_gather(const void* mine, size_t bytes, void* all, std::string_view what) override {
      g_.all_gather(rank_, mine, bytes, all, what);
    }
    void all_to_all_v(const void*, std::span<const size_t>, void*, std::span<const size_t>,
                      std::string_view what) override {
      fail("the thread ranks of this test do no all_to_all_v ({})", what);
    }
    void exchange_counts(std::span<const int64_t>, std::span<int64_t>,
                         std::string_view what) override {
      fail("the thread ranks of this test do no exchange_counts ({})", what);
    }

   private:
    ThreadRanks& g_;
    int rank_;
  };

 private:
  struct Slot {
    std::string bytes, what;
  };

  void all_gather(int rank, const void* mine, size_t bytes, void* all, std::string_view what) {
    std::unique_lock lock(mutex_);
    slots_[rank] = {std::string(static_cast<const char*>(mine), bytes), std::string(what)};
    const uint64_t round = round_;
    if (++arrived_ == n_) {
      result_.clear();
      mismatch_.clear();
      for (int r = 0; r < n_; ++r) {
        result_ += slots_[r].bytes;
        if (slots_[r].what != slots_[0].what || slots_[r].bytes.size() != bytes)
          mismatch_ = fmt::format("rank {} is at '{}', rank 0 at '{}'", r, slots_[r].what,
                                  slots_[0].what);
      }
      arrived_ = 0;
      ++round_;
      done_.notify_all();
    } else if (!done_.wait_for(lock, timeout_, [&] { return round_ != round; })) {
      --arrived_;
      throw RankFailure(fmt::format("rank {}: the other ranks did not reach '{}' within {} ms",
                                    rank, what, timeout_.count()));
    }
    if (!mismatch_.empty()) throw RankFailure(mismatch_);
    std::memcpy(all, result_.data(), result_.size());
  }

  const int n_;
  const std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<Slot> slots_;
  int arrived_ = 0;
  uint64_t round_ = 0;
  std::string result_, mismatch_;
};

// The hash model as one rank of an expert-parallel group: every step of the group is a
// collective ("MoE exchange") that each rank joins, through forward or through idle_step, so a
// rank that skipped one would leave the others waiting and fail them.
class RankedHashModel : public PagedHashModel {
 public:
  RankedHashModel(int n_pages, Communicator& comm) : PagedHashModel(n_pages), comm_(comm) {}

  int64_t begin_step(int64_t tokens) override {
    std::vector<int64_t> all(comm_.size());
    comm_.all_gather(&tokens, sizeof(tokens), all.data(), "begin step");
    int64_t total = 0;
    for (int64_t t : all) total += t;
    if (total > 0) ++group_steps;
    return total;
  }
  const float* forward(const StepInput& in) override {
    if (fail_next_step) throw Error("rank " + std::to_string(comm_.rank()) + " broke");
    moe_exchange();
    return PagedHashModel::forward(in);
  }
  void idle_step() override {
    moe_exchange();
    ++idle_steps;
  }

  int group_steps = 0, idle_steps = 0;
  std::atomic<bool> fail_next_step{false};

 private:
  void moe_exchange() {
    int64_t mine = 1;
    std::vector<int64_t> all(comm_.size());
    comm_.all_gather(&mine, sizeof(mine), all.data(), "moe exchange");
  }
  Communicator& comm_;
};

// A group of serving engines, one per rank; rank 0's takes the requests.
struct Group {
  Group(int n, int pages, ServingOptions o, std::chrono::milliseconds timeout = 20s)
      : ranks(n, timeout) {
    for (int r = 0; r < n; ++r) {
      comms.push_back(std::make_unique<ThreadRanks::Comm>(ranks, r));
      pools.push_back(std::make_unique<KvPagePool>(pages));
      models.push_back(std::make_unique<RankedHashModel>(pages, *comms[r]));
    }
    for (int r = 0; r < n; ++r) {
      ServingOptions ro = o;
      ro.ranks = comms[r].get();
      ro.on_group_failure = [this, r](const std::string& why) {
        std::lock_guard lock(mutex);
        failures.push_back(fmt::format("rank {}: {}", r, why));
      };
      engines.push_back(std::make_unique<ServingEngine>(*models[r], *pools[r], ro));
    }
  }
  ~Group() { stop(); }
  ServingEngine& front() { return *engines[0]; }
  void stop() {
    if (engines.empty()) return;
    engines[0]->stop();
    for (size_t r = 1; r < engines.size(); ++r) engines[r]->join();
  }

  ThreadRanks ranks;
  std::vector<std::unique_ptr<ThreadRanks::Comm>> comms;
  std::vector<std::unique_ptr<KvPagePool>> pools;
  std::vector<std::unique_ptr<RankedHashModel>> models;
  std::vector<std::unique_ptr<ServingEngine>> engines;
  std::mutex mutex;
  std::vector<std::string> failures;
};

}  // namespace

TEST(ServingRanks, RequestsSpreadOverTheRanksAndGiveTheTokensOfOneEngine) {
  std::mt19937 rng(1);
  Group g(3, 128, options(1024, 128));
  std::vector<GenerationRequest> requests;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 30; ++i) {
    requests.push_back(greedy(random_prompt(rng, 1 + int(rng() % 200)), 1 + int(rng() % 30)));
    streams.push_back(g.front().submit(requests.back()));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    Outcome o = collect(*streams[i]);
    EXPECT_EQ(o.tokens, expected_tokens(requests[i].prompt, requests[i].max_new_tokens)) << i;
    EXPECT_EQ(o.end.finish_reason, "length") << i;
    EXPECT_EQ(o.end.completion_tokens, requests[i].max_new_tokens) << i;
  }
  ServingStats s = g.front().stats();
  ASSERT_EQ(s.ranks.size(), 3u);
  int64_t given = 0;
  for (size_t r = 0; r < s.ranks.size(); ++r) {
    EXPECT_GE(s.ranks[r].requests, 5) << "rank " << r << " was left out";
    given += s.ranks[r].requests;
  }
  EXPECT_EQ(given, 30);
  EXPECT_EQ(s.in_flight, 0);
  EXPECT_EQ(s.scheduler.running, 0);
  EXPECT_EQ(s.generated_tokens, [&] {
    int64_t n = 0;
    for (auto& r : requests) n += r.max_new_tokens;
    return n;
  }());
  g.stop();
  // Every rank took part in every step of the group: with its tokens, or idle.
  const int steps = g.models[0]->group_steps;
  EXPECT_GT(steps, 0);
  for (auto& m : g.models) {
    EXPECT_EQ(m->group_steps, steps);
    EXPECT_EQ(int(m->step_tokens.size()) + m->idle_steps, steps);
  }
  EXPECT_TRUE(g.failures.empty()) << g.failures.front();
}

TEST(ServingRanks, ARankWithNoRequestsStillJoinsEveryStep) {
  Group g(2, 32, options(512, 64));
  Outcome o = collect(*g.front().submit(greedy({5, 6, 7}, 40)));
  EXPECT_EQ(o.tokens, expected_tokens({5, 6, 7}, 40));
  g.stop();
  // The request ran on rank 0 (the first goes to the lowest of equally loaded ranks); rank 1
  // served its experts in each of those steps.
  EXPECT_EQ(g.models[0]->step_tokens.size(), 40u);
  EXPECT_EQ(g.models[1]->step_tokens.size(), 0u);
  EXPECT_EQ(g.models[1]->idle_steps, 40);
}

TEST(ServingRanks, NewRequestsGoToTheRankWithLessQueuedWorkAndKvHeld) {
  Group g(2, 64, options(2048, 2048));
  // A long request holds rank 0's pages; small ones that come while it runs go to rank 1.
  auto big = g.front().submit(greedy(std::vector<int32_t>(900, 3), 500));
  std::vector<TokenEvent> first;
  while (first.empty()) big->wait(first, 50ms);
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = {int32_t(10 + i), 4, 2};
    EXPECT_EQ(collect(*g.front().submit(greedy(p, 3))).tokens, expected_tokens(p, 3));
  }
  ServingStats s = g.front().stats();
  EXPECT_EQ(s.ranks[0].requests, 1);
  EXPECT_EQ(s.ranks[1].requests, 4);
  EXPECT_GE(s.ranks[0].kv_pages_used, 900 / kPage);
  big->cancel();
  EXPECT_EQ(collect(*big).end.finish_reason, "cancelled");
}

TEST(ServingRanks, CancellingARequestOnAnotherRankFreesItsPagesThere) {
  ServingOptions o = options(2048, 256);
  o.scheduler.prefix_cache = false;
  Group g(2, 64, o);
  auto a = g.front().submit(greedy(std::vector<int32_t>(300, 1), 1000));
  auto b = g.front().submit(greedy(std::vector<int32_t>(300, 2), 1000));
  std::vector<TokenEvent> events;
  while (events.empty()) b->wait(events, 50ms);
  ASSERT_EQ(g.front().stats().ranks[1].requests, 1) << "b did not go to rank 1";
  b->cancel();
  Outcome ob = collect(*b);
  EXPECT_EQ(ob.end.finish_reason, "cancelled");
  // Rank 1's pages, as rank 0 hears of them in the exchanges.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (g.front().stats().ranks[1].kv_pages_used > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(g.front().stats().ranks[1].kv_pages_used, 0);
  EXPECT_EQ(g.front().stats().ranks[1].running, 0);
  EXPECT_GT(g.front().stats().ranks[0].kv_pages_used, 0) << "a, on rank 0, goes on";
  a->cancel();
  collect(*a);
}

TEST(ServingRanks, StoppingRankZeroStopsTheGroupAndEndsEveryRequest) {
  Group g(2, 64, options(2048, 256));
  auto a = g.front().submit(greedy({1, 2}, 1000)), b = g.front().submit(greedy({3, 4}, 1000));
  std::vector<TokenEvent> events;
  while (events.empty()) b->wait(events, 50ms);
  g.stop();  // returns only once every rank's engine has ended
  EXPECT_EQ(collect(*a).end.finish_reason, "cancelled");
  EXPECT_EQ(collect(*b).end.finish_reason, "cancelled");
  EXPECT_EQ(g.front().submit(greedy({1}, 1)), nullptr);
}

TEST(ServingRanks, ARankThatFailsStopsEveryRankWithTheErrorInsteadOfAHang) {
  Group g(2, 64, options(2048, 256), /*timeout=*/1s);
  auto a = g.front().submit(greedy({1, 2}, 1000)), b = g.front().submit(greedy({3, 4}, 1000));
  std::vector<TokenEvent> events;
  while (events.empty()) b->wait(events, 50ms);
  g.models[1]->fail_next_step = true;
  Outcome oa = collect(*a, 20s), ob = collect(*b, 20s);
  EXPECT_EQ(oa.end.finish_reason, "error");
  EXPECT_EQ(ob.end.finish_reason, "error");
  EXPECT_NE(g.front().failure(), "");
  g.stop();
  std::lock_guard lock(g.mutex);
  ASSERT_EQ(g.failures.size(), 2u) << "both ranks stop";
  bool named = false;
  for (const std::string& f : g.failures) named |= f.find("rank 1 broke") != std::string::npos;
  EXPECT_TRUE(named) << g.failures[0] << " | " << g.failures[1];
}

TEST(RankMessages, EveryFieldSurvivesEncoding) {
  RankMessage m;
  m.stop = true;
  m.report.has_work = true;
  m.report.queued_tokens = 123;
  m.report.held_pages = 7;
  m.report.generated_tokens = 99;
  GenerationRequest r = greedy({4, 5, 6}, 17);
  r.sampling = {0.7f, 40, 0.9f, 1234567890123ull};
  r.top_logprobs = 3;
  r.ignore_eos = true;
  r.stop_token_ids = {9, 8};
  m.assignments.push_back({2, 42, r});
  m.cancels.push_back({1, 41});
  RankMessage::Update u;
  u.id = 40;
  u.tokens.push_back({11, -0.5f, {{11, -0.5f}, {12, -1.25f}}});
  u.end = RequestEnd{"stop", "why not", 3, 1, 2, 4};
  m.updates.push_back(u);
  m.updates.push_back({43, {{13, -2.0f, {}}}, std::nullopt});

  RankMessage d = decode(encode(m));
  EXPECT_TRUE(d.stop);
  EXPECT_TRUE(d.report.has_work);
  EXPECT_EQ(d.report.queued_tokens, 123);
  EXPECT_EQ(d.report.held_pages, 7);
  EXPECT_EQ(d.report.generated_tokens, 99);
  EXPECT_EQ(d.report.load(64), 123 + 7 * 64);
  ASSERT_EQ(d.assignments.size(), 1u);
  const GenerationRequest& dr = d.assignments[0].request;
  EXPECT_EQ(d.assignments[0].rank, 2);
  EXPECT_EQ(d.assignments[0].id, 42u);
  EXPECT_EQ(dr.prompt, r.prompt);
  EXPECT_EQ(dr.max_new_tokens, 17);
  EXPECT_EQ(dr.sampling.temperature, 0.7f);
  EXPECT_EQ(dr.sampling.top_k, 40);
  EXPECT_EQ(dr.sampling.top_p, 0.9f);
  EXPECT_EQ(dr.sampling.seed, 1234567890123ull);
  EXPECT_EQ(dr.top_logprobs, 3);
  EXPECT_TRUE(dr.ignore_eos);
  EXPECT_EQ(dr.stop_token_ids, r.stop_token_ids);
  ASSERT_EQ(d.cancels.size(), 1u);
  EXPECT_EQ(d.cancels[0].rank, 1);
  EXPECT_EQ(d.cancels[0].id, 41u);
  ASSERT_EQ(d.updates.size(), 2u);
  EXPECT_EQ(d.updates[0].id, 40u);
  ASSERT_EQ(d.updates[0].tokens.size(), 1u);
  EXPECT_EQ(d.updates[0].tokens[0].token, 11);
  EXPECT_EQ(d.updates[0].tokens[0].top_logprobs, u.tokens[0].top_logprobs);
  ASSERT_TRUE(d.updates[0].end);
  EXPECT_EQ(d.updates[0].end->finish_reason, "stop");
  EXPECT_EQ(d.updates[0].end->error, "why not");
  EXPECT_EQ(d.updates[0].end->prompt_tokens, 3);
  EXPECT_EQ(d.updates[0].end->cached_prompt_tokens, 1);
  EXPECT_EQ(d.updates[0].end->completion_tokens, 2);
  EXPECT_EQ(d.updates[0].end->preemptions, 4);
  EXPECT_FALSE(d.updates[1].end);
  EXPECT_EQ(d.updates[1].tokens[0].logprob, -2.0f);
}

TEST(RankMessages, TruncatedOrOverlongBytesAreRefused) {
  RankMessage m;
  m.assignments.push_back({1, 1, greedy({1, 2, 3}, 4)});
  const std::string bytes = encode(m);
  for (size_t cut : {size_t(0), size_t(1), bytes.size() / 2, bytes.size() - 1})
    EXPECT_THROW(decode(std::string_view(bytes).substr(0, cut)), Error) << cut;
  EXPECT_THROW(decode(bytes + "x"), Error);
}

TEST(RankMessages, TheLeastLoadedRankWinsAndTiesGoToTheRankGivenFewestRequests) {
  EXPECT_EQ(least_loaded_rank({5, 3, 3, 9}, {0, 0, 0, 0}), 1);
  EXPECT_EQ(least_loaded_rank({5, 3, 3, 9}, {0, 7, 2, 0}), 2);
  EXPECT_EQ(least_loaded_rank({0, 0}, {0, 0}), 0);
  EXPECT_EQ(least_loaded_rank({0, 0, 0}, {4, 3, 3}), 1);
  RankReport busy, idle;
  busy.queued_tokens = 10;
  idle.held_pages = 1;
  EXPECT_EQ(least_loaded_rank({busy.load(64), idle.load(64)}, {9, 0}), 0)
      << "10 queued tokens weigh less than a page of 64 held";
}

TEST(ServingRanks, RequestsOneAfterAnotherTakeTurnsOverIdleRanks) {
  Group g(3, 32, options(512, 64));
  for (int i = 0; i < 6; ++i) collect(*g.front().submit(greedy({int32_t(i), 1}, 2)));
  for (const RankServingStats& r : g.front().stats().ranks) EXPECT_EQ(r.requests, 2);
}
