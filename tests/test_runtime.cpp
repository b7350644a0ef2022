#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "cache/kv_page_pool.h"
#include "core/error.h"
#include "runtime/sampler.h"
#include "runtime/step_builder.h"

using namespace trident;

TEST(KvPagePool, AllocatesAllOrNothingAndReusesReleasedPages) {
  KvPagePool pool(4);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.allocate(3, a));
  EXPECT_EQ(pool.free_pages(), 1);
  EXPECT_FALSE(pool.allocate(2, b));
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(pool.free_pages(), 1);
  pool.release(a);
  EXPECT_EQ(pool.free_pages(), 4);
  ASSERT_TRUE(pool.allocate(4, b));
  EXPECT_EQ(pool.used_pages(), 4);
}

TEST(KvPagePool, DoubleReleaseIsAnError) {
  KvPagePool pool(2);
  std::vector<int32_t> a;
  ASSERT_TRUE(pool.allocate(1, a));
  pool.release(a);
  EXPECT_THROW(pool.release(a), Error);
}

TEST(StepBuilder, MixesChunkedPrefillAndDecode) {
  std::vector<int32_t> s0(100), s1(5);
  for (int i = 0; i < 100; ++i) s0[i] = 1000 + i;
  for (int i = 0; i < 5; ++i) s1[i] = 2000 + i;
  std::vector<int32_t> p0 = {7, 2}, p1 = {5};
  // s0 has 64 tokens cached and runs a chunk of 36; s1 decodes its last token.
  StepInput in = build_step({{&s0, 64, 36, &p0, true}, {&s1, 4, 1, &p1, true}});
  EXPECT_EQ(in.meta.n_tokens, 37);
  EXPECT_EQ(in.meta.n_seqs, 2);
  EXPECT_EQ(in.token_ids.ptr<int32_t>()[0], 1064);
  EXPECT_EQ(in.meta.positions.ptr<int32_t>()[0], 64);
  EXPECT_EQ(in.meta.slot.ptr<int32_t>()[0], 2 * 64 + 0);  // position 64 is in page p0[1] = 2
  EXPECT_EQ(in.meta.slot.ptr<int32_t>()[36], 5 * 64 + 4);
  EXPECT_EQ(in.meta.token_seq.ptr<int32_t>()[36], 1);
  EXPECT_EQ(in.meta.seq_start.ptr<int32_t>()[1], 36);
  EXPECT_EQ(in.meta.seq_kv_len.ptr<int32_t>()[0], 100);
  EXPECT_EQ(in.meta.page_table.ptr<int32_t>()[1], 2);
  ASSERT_EQ(in.logit_rows.numel(), 2);
  EXPECT_EQ(in.logit_rows.ptr<int32_t>()[0], 35);
  EXPECT_EQ(in.logit_rows.ptr<int32_t>()[1], 36);
}

TEST(StepBuilder, RefusesASequenceWithTooFewPages) {
  std::vector<int32_t> s(65), pages = {0};
  EXPECT_THROW(build_step({{&s, 0, 65, &pages, true}}), Error);
}

TEST(Sampler, GreedyPicksTheLargestLogit) {
  std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f};
  Sampler s({0.0f, 0, 1.0f, 0});
  SampledToken t = s.sample(logits.data(), 4);
  EXPECT_EQ(t.id, 1);
  double z = 0;
  for (float l : logits) z += std::exp(l);
  EXPECT_NEAR(t.logprob, 3.0 - std::log(z), 1e-5);
}

TEST(Sampler, SameSeedSameTokensAndFrequenciesFollowTheSoftmax) {
  std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), -50.0f};
  Sampler a({1.0f, 0, 1.0f, 42}), b({1.0f, 0, 1.0f, 42});
  std::map<int, int> counts;
  const int n = 6000;
  for (int i = 0; i < n; ++i) {
    int x = a.sample(logits.data(), 4).id;
    EXPECT_EQ(x, b.sample(logits.data(), 4).id);
    counts[x]++;
  }
  EXPECT_NEAR(counts[0] / double(n), 1 / 6.0, 0.03);
  EXPECT_NEAR(counts[1] / double(n), 2 / 6.0, 0.03);
  EXPECT_NEAR(counts[2] / double(n), 3 / 6.0, 0.03);
  EXPECT_EQ(counts[3], 0);
}

TEST(Sampler, TopKAndTopPCutTheTail) {
  std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  Sampler k2({1.0f, 2, 1.0f, 1});
  Sampler p({1.0f, 0, 0.5f, 1});  // 4/10 < 0.5 <= 7/10: keeps ids 3 and 2
  for (int i = 0; i < 500; ++i) {
    EXPECT_GE(k2.sample(logits.data(), 4).id, 2);
    EXPECT_GE(p.sample(logits.data(), 4).id, 2);
  }
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), Error);
}
