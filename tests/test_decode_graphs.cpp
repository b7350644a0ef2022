// The decode-graph step layout, checked on the CPU backend: a decode step padded to its graph's
// bucket (rows writing to a scratch page, a page table as wide as the longest context) gives the
// same logits for the real rows as the step itself. The graphs themselves are CUDA's
// (tests/gpu/test_decode_graphs.cpp).
#include "runtime/decode_graphs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "cache/kv_page_pool.h"
#include "core/error.h"
#include "runtime/engine.h"
#include "runtime/step_builder.h"

namespace trident {
namespace {

namespace fs = std::filesystem;

TEST(DecodeGraphBuckets, CoverEveryBatchUpToTheLargestWithBoundedPadding) {
  EXPECT_EQ(decode_graph_buckets(1), std::vector<int>({1}));
  EXPECT_EQ(decode_graph_buckets(6), std::vector<int>({1, 2, 4, 6}));
  const std::vector<int> b = decode_graph_buckets(256);
  EXPECT_EQ(b.front(), 1);
  EXPECT_EQ(b.back(), 256);
  ASSERT_TRUE(std::is_sorted(b.begin(), b.end()));
  for (int n = 9; n <= 256; ++n) {
    const int bucket = *std::lower_bound(b.begin(), b.end(), n);
    EXPECT_LE(bucket - n, std::max(7, n / 4)) << "batch " << n << " pads to " << bucket;
  }
  EXPECT_TRUE(decode_graph_buckets(0).empty());
}

TEST(DecodeStep, OnlyOneTokenPerSequenceWithItsLogitsIsADecodeStep) {
  std::vector<int32_t> a(70, 1), b(3, 2), pa = {4, 9}, pb = {5};
  EXPECT_TRUE(is_decode_step(build_step({{&a, 69, 1, &pa, true}, {&b, 2, 1, &pb, true}})));
  EXPECT_FALSE(is_decode_step(build_step({{&a, 68, 2, &pa, true}, {&b, 2, 1, &pb, true}})));
  EXPECT_FALSE(is_decode_step(build_step({{&a, 69, 1, &pa, false}, {&b, 2, 1, &pb, true}})));
}

TEST(DecodeStep, PackingPadsRowsIntoTheScratchPageAndRefusesWhatDoesNotFit) {
  std::vector<int32_t> a(70, 1), pa = {4, 9};
  StepInput host = build_step({{&a, 69, 1, &pa, true}});
  const DecodeStepLayout layout(4, 200);  // 4 page-table entries per row
  std::vector<int32_t> packed(layout.size(), -7);
  pack_decode_step(&host, layout, 11, packed.data());
  EXPECT_EQ(packed[layout.positions()], 69);
  EXPECT_EQ(packed[layout.slot()], 9 * 64 + 5);
  EXPECT_EQ(packed[layout.slot() + 1], 11 * 64);
  EXPECT_EQ(packed[layout.seq_kv_len() + 3], 1);
  EXPECT_EQ(packed[layout.seq_start() + 4], 4);
  const int32_t* row0 = packed.data() + layout.page_table();
  EXPECT_EQ(std::vector<int32_t>(row0, row0 + 4), std::vector<int32_t>({4, 9, 11, 11}));
  EXPECT_THROW(pack_decode_step(&host, DecodeStepLayout(4, 64), 11, packed.data()), Error);
  std::vector<int32_t> b(3, 2), pb = {5}, c(3, 2), pc = {6};
  StepInput three = build_step({{&a, 69, 1, &pa, true}, {&b, 2, 1, &pb, true}, {&c, 2, 1, &pc, true}});
  EXPECT_THROW(pack_decode_step(&three, DecodeStepLayout(2, 200), 11, packed.data()), Error);
}

TEST(DecodeStep, APaddedStepGivesTheStepsLogits) {
  EngineOptions eo;
  eo.model_dir = fs::path(TRIDENT_MODELS_DIR) / "trident-tiny";
  eo.max_context = 256;
  eo.kv_pages = 16;
  Engine engine(eo);
  const int vocab = engine.config().vocab_size;
  // Three sequences of different lengths prefilled, then one decode token each.
  std::vector<std::vector<int32_t>> tokens = {
      std::vector<int32_t>(70, 0), std::vector<int32_t>(5, 0), std::vector<int32_t>(130, 0)};
  std::vector<std::vector<int32_t>> pages(3);
  for (size_t s = 0; s < tokens.size(); ++s) {
    for (size_t i = 0; i < tokens[s].size(); ++i) tokens[s][i] = int32_t((s * 131 + i * 17) % vocab);
    ASSERT_TRUE(engine.pool().allocate(pages_for_tokens(tokens[s].size(), 64), pages[s]));
    engine.forward(build_step({{&tokens[s], 0, int(tokens[s].size()) - 1, &pages[s], true}}));
  }
  std::vector<StepChunk> decode;
  for (size_t s = 0; s < tokens.size(); ++s)
    decode.push_back({&tokens[s], int(tokens[s].size()) - 1, 1, &pages[s], true});
  const StepInput host = build_step(decode);
  Tensor eager = engine.forward(host);

  const int scratch = engine.pool().total_pages() - 1;
  ASSERT_FALSE(engine.pool().in_use(scratch));
  const DecodeStepLayout layout(8, 256);
  Tensor packed = cpu_tensor(DType::I32, {layout.size()});
  pack_decode_step(&host, layout, scratch, packed.ptr<int32_t>());
  Tensor padded = engine.model().forward(decode_step_views(packed, layout), engine.cache());
  ASSERT_EQ(padded.dim(0), 8);
  for (int r = 0; r < 3; ++r) {
    const float* e = eager.ptr<float>() + int64_t(r) * vocab;
    const float* p = padded.ptr<float>() + int64_t(r) * vocab;
    const auto [lo, hi] = std::minmax_element(e, e + vocab);
    double worst = 0;
    for (int v = 0; v < vocab; ++v) worst = std::max(worst, double(std::fabs(e[v] - p[v])));
    EXPECT_LE(worst, 1e-5 * (*hi - *lo)) << "row " << r;
  }
}

}  // namespace
}  // namespace trident
