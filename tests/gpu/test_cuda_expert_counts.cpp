// The expert load counter on the GPU against the CPU backend: the same counts from the same ids,
// added onto counts already there, one layer's row at a time, and inside a CUDA graph.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

// Ids of `tokens` x `top_k` choices, a few outside [0, experts) (which neither backend counts),
// the first always inside.
Tensor random_expert_ids(int64_t tokens, int64_t top_k, int32_t experts) {
  Tensor ids = cpu_tensor(DType::I32, {tokens, top_k});
  std::uniform_int_distribution<int32_t> pick(-2, experts + 1);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.ptr<int32_t>()[i] = pick(rng());
  // At least one counted id, so every case changes the counts.
  ids.ptr<int32_t>()[0] = std::uniform_int_distribution<int32_t>(0, experts - 1)(rng());
  return ids;
}

// A [layers, experts] counter holding large counts from earlier steps.
Tensor random_counter(int64_t layers, int64_t experts) {
  Tensor c = cpu_tensor(DType::I64, {layers, experts});
  std::uniform_int_distribution<int64_t> pick(0, int64_t(1) << 40);
  for (int64_t i = 0; i < c.numel(); ++i) c.ptr<int64_t>()[i] = pick(rng());
  return c;
}

std::vector<int64_t> values(const Tensor& host) {
  return {host.ptr<int64_t>(), host.ptr<int64_t>() + host.numel()};
}

TEST(CudaExpertCounts, AddsTheCpuCountsToOneLayersRowAndLeavesTheOthers) {
  SCOPED_TRACE(seed_note());
  // One token; an odd batch; a decode batch of DeepSeek-V3's 256 experts top-8; a prefill chunk
  // over several programs; a small expert count with many tokens on each expert.
  const int64_t shapes[][3] = {
      {1, 1, 1}, {37, 3, 17}, {128, 8, 256}, {4099, 8, 256}, {2000, 4, 16}};
  for (const auto& s : shapes) {
    const int64_t tokens = s[0], top_k = s[1], experts = s[2];
    SCOPED_TRACE(fmt::format("{} tokens, top-{}, {} experts", tokens, top_k, experts));
    Tensor ids = random_expert_ids(tokens, top_k, int32_t(experts));
    Tensor want = random_counter(3, experts);
    Tensor counter = gpu().upload(want);
    Tensor row = counter.rows(1, 2).reshape({experts});
    Tensor want_row = want.rows(1, 2).reshape({experts});
    Tensor before = cpu_tensor(DType::I64, {3, experts});
    std::memcpy(before.data, want.data, want.nbytes());
    cpu().add_expert_counts(ids, want_row);
    gpu().add_expert_counts(gpu().upload(ids), row);
    const std::vector<int64_t> got = values(download(counter));
    EXPECT_EQ(got, values(want));
    EXPECT_NE(values(want), values(before)) << "the ids added nothing: the test cannot fail";
  }
}

TEST(CudaExpertCounts, AGraphReplayAddsTheStepsIdsAgainWithoutTheHost) {
  if (!gpu().supports_graphs()) GTEST_SKIP() << "this backend has no graphs";
  SCOPED_TRACE(seed_note());
  const int64_t experts = 64;
  Tensor ids_host = random_expert_ids(96, 8, int32_t(experts));
  Tensor once = cpu_tensor(DType::I64, {experts});
  cpu().add_expert_counts(ids_host, once);
  Tensor ids = gpu().upload(ids_host);
  Tensor counts = gpu().upload(cpu_tensor(DType::I64, {experts}));
  gpu().reserve_graph_workspace(1 << 20);
  {
    std::unique_ptr<Graph> graph =
        gpu().capture_graph([&] { gpu().add_expert_counts(ids, counts); });
    // Capturing records without running: nothing counted yet.
    EXPECT_EQ(values(download(counts)), std::vector<int64_t>(experts, 0));
    for (int replay = 1; replay <= 3; ++replay) {
      graph->replay();
      std::vector<int64_t> want = values(once);
      for (int64_t& v : want) v *= replay;
      EXPECT_EQ(values(download(counts)), want) << "after replay " << replay;
    }
  }
  gpu().reserve_graph_workspace(0);  // the graph is gone: give its workspace back
}

}  // namespace
}  // namespace trident::gpu_test
