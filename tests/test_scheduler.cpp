// The scheduler and the serving engine: continuous batching with chunked prefill, admission by
// free pages, preemption, the prefix cache and KV fragmentation, checked on a stand-in model
// that reads its "latents" back through the page tables (so a wrong page table, or a page freed
// while still in use, changes the tokens), and on a real model against Engine::generate.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "runtime/serving_engine.h"
#include "serving_test_model.h"

using namespace trident;
using namespace trident::serving_test;
using namespace std::chrono_literals;

TEST(Scheduler, BatchedGreedyTokensMatchEachRequestAlone) {
  std::mt19937 rng(1);
  KvPagePool pool(256);
  PagedHashModel model(pool.total_pages());
  // The first step waits for every request: they all run together from the second on.
  Gate all_submitted;
  model.on_step = [&] {
    if (model.step_tokens.size() == 1) all_submitted.wait();
  };
  ServingEngine engine(model, pool, options(1024, 128));
  std::vector<GenerationRequest> requests;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 40; ++i) {
    requests.push_back(greedy(random_prompt(rng, 1 + int(rng() % 300)), 1 + int(rng() % 40)));
    streams.push_back(engine.submit(requests.back()));
  }
  all_submitted.open();
  for (size_t i = 0; i < requests.size(); ++i) {
    Outcome o = collect(*streams[i]);
    EXPECT_EQ(o.tokens, expected_tokens(requests[i].prompt, requests[i].max_new_tokens)) << i;
    EXPECT_EQ(o.end.finish_reason, "length");
    EXPECT_EQ(o.end.completion_tokens, requests[i].max_new_tokens);
  }
  EXPECT_GT(*std::max_element(model.step_seqs.begin(), model.step_seqs.end()), 8)
      << "the requests never ran together";
  engine.stop();
  expect_no_page_held(pool, engine.stats());
}

TEST(Scheduler, ChunkedPrefillKeepsStepsWithinTheTokenBudgetAndMixesDecodes) {
  std::mt19937 rng(2);
  KvPagePool pool(64);
  PagedHashModel model(pool.total_pages());
  Gate b_submitted;
  model.on_step = [&] {
    if (model.step_tokens.size() == 2) b_submitted.wait();
  };
  ServingEngine engine(model, pool, options(4096, 48));
  auto a = greedy(random_prompt(rng, 5), 3000), b = greedy(random_prompt(rng, 700), 3);
  auto sa = engine.submit(a);
  // b arrives while a decodes (the engine waits in a's first decode step for it): b's prefill
  // runs in chunks beside a's decodes.
  std::vector<TokenEvent> first;
  while (first.empty()) sa->wait(first, 50ms);
  auto sb = engine.submit(b);
  b_submitted.open();
  Outcome ob = collect(*sb);
  sa->cancel();
  collect(*sa);
  EXPECT_EQ(ob.tokens, expected_tokens(b.prompt, 3));
  EXPECT_LE(*std::max_element(model.step_tokens.begin(), model.step_tokens.end()), 48);
  int mixed = 0;
  for (size_t i = 0; i < model.step_tokens.size(); ++i)
    mixed += model.step_seqs[i] == 2 && model.step_tokens[i] == 48;
  EXPECT_GE(mixed, 700 / 47) << "b's prefill did not run in chunks beside a's decodes";
}

TEST(Scheduler, PreemptsWhenPagesRunOutAndLosesNoRequest) {
  std::mt19937 rng(3);
  // Room for one full-context sequence only: 16 requests of ~250 tokens must take turns.
  const int context = 512;
  KvPagePool pool(pages_for_tokens(context, kPage));
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(context, 256);
  o.scheduler.prefix_cache = false;
  Gate all_submitted;
  model.on_step = [&] {
    if (model.step_tokens.size() == 1) all_submitted.wait();
  };
  ServingEngine engine(model, pool, o);
  std::vector<GenerationRequest> requests;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 16; ++i) {
    requests.push_back(greedy(random_prompt(rng, 60 + int(rng() % 60)), 130 + int(rng() % 60)));
    streams.push_back(engine.submit(requests.back()));
  }
  all_submitted.open();
  int preempted = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    Outcome out = collect(*streams[i]);
    EXPECT_EQ(out.tokens, expected_tokens(requests[i].prompt, requests[i].max_new_tokens)) << i;
    preempted += out.end.preemptions;
    // The newest running request gives its pages up, so the oldest always runs to its end.
    if (i == 0) {
      EXPECT_EQ(out.end.preemptions, 0);
    }
  }
  EXPECT_GT(preempted, 0) << "the pool never ran short; the test does not test preemption";
  EXPECT_EQ(engine.stats().scheduler.preemptions, preempted);
  engine.stop();
  EXPECT_EQ(pool.used_pages(), 0);
}

TEST(Scheduler, PreemptionWithThePrefixCacheKeepsTokensExact) {
  std::mt19937 rng(4);
  const int context = 512;
  KvPagePool pool(pages_for_tokens(context, kPage) + 2);
  PagedHashModel model(pool.total_pages());
  Gate all_submitted;
  model.on_step = [&] {
    if (model.step_tokens.size() == 1) all_submitted.wait();
  };
  ServingEngine engine(model, pool, options(context, 100));
  std::vector<int32_t> shared = random_prompt(rng, 150);
  std::vector<GenerationRequest> requests;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 12; ++i) {
    std::vector<int32_t> p = shared, tail = random_prompt(rng, 1 + int(rng() % 40));
    p.insert(p.end(), tail.begin(), tail.end());
    requests.push_back(greedy(p, 100 + int(rng() % 100)));
    streams.push_back(engine.submit(requests.back()));
  }
  all_submitted.open();
  for (size_t i = 0; i < requests.size(); ++i)
    EXPECT_EQ(collect(*streams[i]).tokens,
              expected_tokens(requests[i].prompt, requests[i].max_new_tokens))
        << i;
  ServingStats s = engine.stats();
  EXPECT_GT(s.scheduler.preemptions, 0);
  EXPECT_GT(s.scheduler.cached_prompt_tokens, 0);
  engine.stop();
  expect_no_page_held(pool, engine.stats());
}

TEST(Scheduler, SharedPrefixesHitTheCacheAndGiveTheColdTokens) {
  std::mt19937 rng(5);
  KvPagePool pool(128);
  PagedHashModel model(pool.total_pages());
  ServingEngine engine(model, pool, options(2048, 256));
  std::vector<int32_t> system = random_prompt(rng, 300);
  int64_t prompt_tokens = 0;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = system, q = random_prompt(rng, 20);
    p.insert(p.end(), q.begin(), q.end());
    prompt_tokens += int64_t(p.size());
    Outcome o = collect(*engine.submit(greedy(p, 8)));
    EXPECT_EQ(o.tokens, expected_tokens(p, 8));
    // The first request computes everything; the others find the 256 tokens of whole pages.
    EXPECT_EQ(o.end.cached_prompt_tokens, i == 0 ? 0 : 4 * kPage) << i;
  }
  SchedulerStats s = engine.stats().scheduler;
  EXPECT_EQ(s.prompt_tokens, prompt_tokens);
  EXPECT_EQ(s.cached_prompt_tokens, 5 * 4 * kPage);
  EXPECT_LT(s.computed_tokens, prompt_tokens);
}

TEST(Scheduler, WhenPagesRunShortTheLeastRecentlyUsedCachedPrefixesAreEvicted) {
  std::mt19937 rng(10);
  // 16 pages: five finished requests leave 3 cached pages each (15), so the sixth must evict.
  KvPagePool pool(16);
  PagedHashModel model(pool.total_pages());
  ServingEngine engine(model, pool, options(512, 256));
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(random_prompt(rng, 3 * kPage + 10));
  auto run = [&](int i) {
    Outcome o = collect(*engine.submit(greedy(prompts[i], 4)));
    EXPECT_EQ(o.tokens, expected_tokens(prompts[i], 4)) << i;
    return o.end.cached_prompt_tokens;
  };
  for (int i = 0; i < 5; ++i) EXPECT_EQ(run(i), 0) << i;
  EXPECT_EQ(run(0), 3 * kPage) << "prompt 0 is cached and now the most recently used";
  EXPECT_EQ(engine.stats().kv_pages_cached, 15);
  EXPECT_EQ(engine.stats().scheduler.evicted_pages, 0);
  // Prompt 5 needs 4 pages and 1 is free: prompt 1's pages, the least recently used, go.
  EXPECT_EQ(run(5), 0);
  EXPECT_EQ(engine.stats().scheduler.evicted_pages, 3);
  EXPECT_EQ(run(1), 0) << "prompt 1's pages were evicted";
  EXPECT_EQ(run(0), 3 * kPage) << "prompt 0, used recently, stayed cached";
  EXPECT_EQ(run(5), 3 * kPage);
  engine.stop();
  expect_no_page_held(pool, engine.stats());
}

TEST(Scheduler, FragmentationStaysUnderThreePercentForTwoThousandTokenRequests) {
  std::mt19937 rng(6);
  const int context = 4096;
  KvPagePool pool(1024);
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(context, 2048, 32);
  o.scheduler.prefix_cache = false;
  ServingEngine engine(model, pool, o);
  // Fragmentation (allocated but unused slots over allocated slots), sampled at every step.
  int64_t unused = 0, allocated = 0;
  double worst_loaded = 0;
  Gate all_submitted;
  model.on_step = [&] {
    if (model.step_tokens.size() == 1) all_submitted.wait();
    int64_t slots = int64_t(pool.used_pages()) * kPage;
    unused += slots - pool.filled_slots();
    allocated += slots;
    if (model.step_seqs.back() >= 16) worst_loaded = std::max(worst_loaded, pool.fragmentation());
  };
  std::vector<std::shared_ptr<RequestStream>> streams;
  int64_t total_len = 0;
  for (int i = 0; i < 48; ++i) {
    int prompt = 1500 + int(rng() % 900), out = 10 + int(rng() % 190);
    total_len += prompt + out;
    streams.push_back(engine.submit(greedy(random_prompt(rng, prompt), out)));
  }
  all_submitted.open();
  for (auto& s : streams) EXPECT_EQ(collect(*s).end.finish_reason, "length");
  double mean_len = double(total_len) / 48;
  EXPECT_NEAR(mean_len, 2000, 150);
  double fragmentation = double(unused) / double(allocated);
  EXPECT_LE(fragmentation, 0.03);
  EXPECT_LE(worst_loaded, 0.03);
  EXPECT_GT(fragmentation, 0.0) << "fragmentation is not measured";
}

TEST(Scheduler, CancellingARequestFreesItsPages) {
  std::mt19937 rng(7);
  KvPagePool pool(64);
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(2048, 64);
  o.scheduler.prefix_cache = false;
  Gate cancelled;
  model.on_step = [&] {
    if (model.step_tokens.size() == 10) cancelled.wait();
  };
  ServingEngine engine(model, pool, o);
  auto stream = engine.submit(greedy(random_prompt(rng, 500), 1000));
  std::vector<TokenEvent> events;
  while (events.empty()) stream->wait(events, 50ms);
  EXPECT_GT(engine.stats().kv_pages_used, 0);
  stream->cancel();
  cancelled.open();
  Outcome out = collect(*stream);
  EXPECT_EQ(out.end.finish_reason, "cancelled");
  EXPECT_LE(events.size() + out.tokens.size(), 3u) << "the engine ran on after the cancellation";
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (engine.stats().in_flight > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(engine.stats().kv_pages_used, 0);
}

TEST(Scheduler, WaitingRequestsStartInArrivalOrder) {
  std::mt19937 rng(8);
  KvPagePool pool(64);
  PagedHashModel model(pool.total_pages());
  // Request i's prompt starts with token i: the prefills that start at position 0, in step
  // order, are the order requests were admitted in.
  ServingEngine engine(model, pool, options(1024, 64, /*max_running=*/2));
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 12; ++i) {
    std::vector<int32_t> p = random_prompt(rng, 10 + int(rng() % 50));
    p[0] = i;
    streams.push_back(engine.submit(greedy(p, 1 + int(rng() % 10))));
  }
  for (auto& s : streams) collect(*s);
  ASSERT_EQ(model.first_tokens.size(), streams.size());
  for (int i = 0; i < int(streams.size()); ++i) EXPECT_EQ(model.first_tokens[i], i);
}

TEST(Scheduler, ARequestThatDoesNotFitYetIsNotOvertakenByLaterOnes) {
  std::mt19937 rng(11);
  // 16 pages. a runs long and holds 9 of them; b's prompt needs 10, so it waits for a; c, small,
  // comes after b and would fit at once, but waits behind b: nobody waits for ever behind a
  // stream of small requests.
  KvPagePool pool(16);
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(1024, 1024);
  o.scheduler.prefix_cache = false;
  ServingEngine engine(model, pool, o);
  std::vector<int32_t> pa = random_prompt(rng, 8 * kPage), pb = random_prompt(rng, 10 * kPage - 2),
                       pc = random_prompt(rng, 5);
  pa[0] = 0, pb[0] = 1, pc[0] = 2;
  auto a = engine.submit(greedy(pa, 40));
  std::vector<TokenEvent> first;
  while (first.empty()) a->wait(first, 50ms);
  auto b = engine.submit(greedy(pb, 3));
  auto c = engine.submit(greedy(pc, 3));
  EXPECT_EQ(collect(*a).end.finish_reason, "length");
  EXPECT_EQ(collect(*b).tokens, expected_tokens(pb, 3));
  EXPECT_EQ(collect(*c).tokens, expected_tokens(pc, 3));
  EXPECT_EQ(model.first_tokens, (std::vector<int32_t>{0, 1, 2}));
}

TEST(Scheduler, ARequestThatWaitsLongerThanTheBoundEndsAsATimeoutAndOthersGoOn) {
  KvPagePool pool(64);
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(2048, 256, /*max_running=*/1);
  o.max_queue_wait = 100ms;
  // Steps of a millisecond at least: a's 300 tokens take longer than b may wait.
  model.on_step = [] { std::this_thread::sleep_for(1ms); };
  ServingEngine engine(model, pool, o);
  // a runs long, so b cannot start; c comes once a is done and starts at once.
  auto a = engine.submit(greedy({1, 2, 3}, 300));
  std::vector<TokenEvent> first;
  while (first.empty()) a->wait(first, 50ms);
  const auto b_submitted = std::chrono::steady_clock::now();
  Outcome b = collect(*engine.submit(greedy({4, 5}, 3)));
  EXPECT_GE(std::chrono::steady_clock::now() - b_submitted, 100ms);
  EXPECT_EQ(b.end.finish_reason, "timeout");
  EXPECT_NE(b.end.error.find("waited"), std::string::npos) << b.end.error;
  EXPECT_TRUE(b.tokens.empty());
  Outcome oa = collect(*a);
  EXPECT_EQ(oa.end.finish_reason, "length");
  EXPECT_EQ(oa.tokens.size() + first.size(), 300u);
  EXPECT_EQ(collect(*engine.submit(greedy({6}, 2))).end.finish_reason, "length");
}

TEST(Scheduler, RefusesRequestsBeyondTheLimitAndRequestsItCannotRun) {
  KvPagePool pool(16);
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(512, 64);
  o.max_requests = 2;
  // a and b stay in flight: the engine holds in its first step until the checks are done.
  Gate checked;
  model.on_step = [&] {
    if (model.step_tokens.size() == 1) checked.wait();
  };
  ServingEngine engine(model, pool, o);
  auto a = engine.submit(greedy({1, 2, 3}, 200)), b = engine.submit(greedy({4, 5}, 200));
  EXPECT_TRUE(a && b);
  EXPECT_EQ(engine.submit(greedy({6}, 5)), nullptr);
  EXPECT_THROW(engine.submit(greedy({}, 5)), Error);
  EXPECT_THROW(engine.submit(greedy(std::vector<int32_t>(512, 1), 5)), Error);
  EXPECT_THROW(engine.submit(greedy({kVocab}, 5)), Error);
  EXPECT_THROW(engine.submit(greedy({1}, 0)), Error);
  checked.open();
  a->cancel();
  b->cancel();
  collect(*a);
  collect(*b);
}

TEST(Scheduler, StopsAtEndOfSequenceUnlessToldToIgnoreIt) {
  std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  std::vector<int32_t> cold = expected_tokens(prompt, 10);
  KvPagePool pool(16);
  PagedHashModel model(pool.total_pages());
  ServingOptions o = options(512, 64);
  o.eos_token_ids = {cold[3]};
  ServingEngine engine(model, pool, o);
  int first_eos = int(std::find(cold.begin(), cold.end(), cold[3]) - cold.begin());
  Outcome stopped = collect(*engine.submit(greedy(prompt, 10)));
  EXPECT_EQ(stopped.end.finish_reason, "stop");
  EXPECT_EQ(int(stopped.tokens.size()), first_eos + 1);
  GenerationRequest r = greedy(prompt, 10);
  r.ignore_eos = true;
  Outcome ignored = collect(*engine.submit(r));
  EXPECT_EQ(ignored.end.finish_reason, "length");
  EXPECT_EQ(ignored.tokens, cold);
}

TEST(Scheduler, PoolTooSmallForOneContextIsRefused) {
  KvPagePool pool(4);
  SchedulerOptions o;
  o.max_context = 4 * kPage + 1;
  EXPECT_THROW(Scheduler(pool, o), Error);
}

// On the real model (a tiny DeepSeek-V3 fixture), greedy tokens of requests batched with chunked
// prefill, prefix-cache hits and decodes are the tokens Engine::generate gives each alone.
TEST(Scheduler, RealModelBatchedGreedyMatchesGenerateAlone) {
  std::filesystem::path dir = std::filesystem::path(TRIDENT_TEST_DATA) / "golden/v3-yarn-bf16";
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
  EngineOptions eo;
  eo.model_dir = dir;
  eo.max_context = 256;
  eo.kv_pages = 24;
  Engine engine(eo);
  std::mt19937 rng(9);
  const int vocab = engine.config().vocab_size;
  std::vector<int32_t> shared(100);
  for (int32_t& t : shared) t = int32_t(rng() % vocab);
  std::vector<GenerationRequest> requests;
  std::vector<std::vector<int32_t>> alone;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = i % 2 ? shared : std::vector<int32_t>{};
    int extra = 1 + int(rng() % 90);
    for (int j = 0; j < extra; ++j) p.push_back(int32_t(rng() % vocab));
    GenerationRequest r = greedy(p, 4 + int(rng() % 8));
    r.ignore_eos = true;
    requests.push_back(r);
    GenerateOptions go;
    go.max_new_tokens = r.max_new_tokens;
    go.stop_at_eos = false;
    alone.push_back(engine.generate(p, go).tokens);
  }
  EngineStepModel model(engine);
  ServingEngine serving(model, engine.pool(), options(eo.max_context, 40));
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (auto& r : requests) streams.push_back(serving.submit(r));
  for (size_t i = 0; i < requests.size(); ++i)
    EXPECT_EQ(collect(*streams[i]).tokens, alone[i]) << i;
  EXPECT_GT(serving.stats().scheduler.cached_prompt_tokens, 0);
}
