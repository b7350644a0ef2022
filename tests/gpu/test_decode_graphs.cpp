// CUDA graphs: captures replay the ops on the inputs of the moment, carve their tensors from the
// backend's graph workspace, and fail cleanly on what a capture cannot hold; decode steps through
// the engine's graphs give the logits and greedy tokens of the same steps run op by op.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "gpu_test_support.h"
#include "runtime/engine.h"
#include "runtime/step_builder.h"

namespace trident::gpu_test {
namespace {

namespace fs = std::filesystem;

// Reserves a graph workspace on the shared test backend for one test, and gives it back.
struct GraphWorkspace {
  explicit GraphWorkspace(int64_t bytes) { gpu().reserve_graph_workspace(bytes); }
  ~GraphWorkspace() { gpu().reserve_graph_workspace(0); }
};

TEST(CudaGraph, ReplaysTheCapturedOpsOnTheInputsOfTheMoment) {
  SCOPED_TRACE(seed_note());
  GraphWorkspace workspace(8 << 20);
  const int64_t T = 37, D = 1000;
  Tensor x = gpu().alloc(DType::BF16, {T, D});
  Tensor host_w = random_host(DType::BF16, {D});
  Tensor w = gpu().upload(host_w);
  Tensor out;
  {
    std::unique_ptr<Graph> graph = gpu().capture_graph([&] {
      Tensor h = gpu().alloc(DType::BF16, {T, D});
      gpu().rms_norm(x, w, 1e-6f, h);
      out = gpu().alloc(DType::BF16, {T, D});
      gpu().add(out, h);
      gpu().add(out, h);  // out = 2 rms_norm(x)
    });
    for (int round = 0; round < 3; ++round) {
      Tensor host_x = random_host(DType::BF16, {T, D});
      gpu().from_host(host_x.data, x);
      graph->replay();
      // Doubling is exact in bf16, so the graph's result is the op's within its one-ulp bound.
      Tensor want = cpu_tensor(DType::BF16, {T, D});
      cpu().rms_norm(host_x, host_w, 1e-6f, want);
      cpu().add(want, Tensor(want));
      Diff d = compare(download(out), want);
      EXPECT_EQ(d.nan, 0) << describe(d);
      EXPECT_EQ(d.over_ulps, 0) << "round " << round << ": " << describe(d);
    }
  }
  out = Tensor();
}

TEST(CudaGraph, ACaptureThatSynchronizesFailsAndLeavesTheStreamUsable) {
  GraphWorkspace workspace(1 << 20);
  try {
    gpu().capture_graph([&] {
      Tensor t = gpu().alloc(DType::F32, {16});
      gpu().synchronize();
    });
    ADD_FAILURE() << "a capture that waits for the device should fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capturing a CUDA graph"), std::string::npos) << e.what();
  }
  Tensor host = random_host(DType::F32, {16});
  Tensor t = gpu().upload(host);
  Diff d = compare(download(t), host, 0.0);
  EXPECT_EQ(d.over_ulps, 0) << "the stream should run eager work after a failed capture";
}

TEST(CudaGraph, ACaptureLargerThanItsWorkspaceSaysSo) {
  GraphWorkspace workspace(1 << 20);
  try {
    gpu().capture_graph([&] { Tensor t = gpu().alloc(DType::F32, {1 << 20}); });
    ADD_FAILURE() << "4 MB cannot come from a 1 MB workspace";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("graph workspace"), std::string::npos) << e.what();
  }
}

// Greedy decoding of five sequences of different lengths (pages crossed during the steps), then
// three, then one: the graphed engine's logits against op-by-op steps on the same tokens. The
// graphs split each context for the longest one allowed, op-by-op steps for the longest in the
// step, so bf16 rounding differs a little; the greedy token must agree wherever the margin is
// clear of that.
class DecodeGraphsOnGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeGraphsOnGpu, LogitsAndGreedyTokensAreThoseOfOpByOpSteps) {
  EngineOptions eo;
  eo.model_dir = fs::path(TRIDENT_MODELS_DIR) / GetParam();
  eo.device = "cuda";
  eo.max_context = 512;
  eo.kv_pages = 64;
  eo.gpu_memory_fraction = 0;
  Engine eager(eo);
  eo.decode_graph_max_batch = 8;
  Engine graphed(eo);
  ASSERT_NE(graphed.decode_graphs(), nullptr);
  EXPECT_EQ(graphed.decode_graphs()->buckets(), std::vector<int>({1, 2, 4, 8}));
  const int vocab = eager.config().vocab_size;

  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> pages_e, pages_g;
  for (int len : {1, 9, 60, 64, 200}) {
    std::vector<int32_t> t(len);
    for (int& v : t) v = int(rng()() % vocab);
    tokens.push_back(t);
  }
  pages_e.resize(tokens.size());
  pages_g.resize(tokens.size());
  const int steps = 14;
  for (size_t s = 0; s < tokens.size(); ++s) {
    const int need = pages_for_tokens(tokens[s].size() + steps, 64);
    ASSERT_TRUE(eager.pool().allocate(need, pages_e[s]));
    ASSERT_TRUE(graphed.pool().allocate(need, pages_g[s]));
    ASSERT_EQ(pages_e[s], pages_g[s]);
    StepInput prefill = build_step({{&tokens[s], 0, int(tokens[s].size()), &pages_e[s], true}});
    eager.forward(prefill);
    graphed.forward(prefill);
    std::vector<float> logits(vocab);
    eager.backend().to_host(eager.forward(prefill), logits.data());
    tokens[s].push_back(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  // The one-token prompt's step is a decode step of one sequence; the others take no graph.
  EXPECT_EQ(graphed.decode_graphs()->replays(), 1) << "prefill steps take no graph";

  int compared = 0, clear = 0;
  double worst = 0;
  for (int step = 0; step < steps; ++step) {
    const size_t batch = step < 8 ? 5 : step < 12 ? 3 : 1;
    std::vector<StepChunk> chunks;
    for (size_t s = 0; s < batch; ++s)
      chunks.push_back({&tokens[s], int(tokens[s].size()) - 1, 1, &pages_e[s], true});
    const StepInput host = build_step(chunks);
    std::vector<float> le(batch * vocab), lg(batch * vocab);
    eager.backend().to_host(eager.forward(host), le.data());
    graphed.backend().to_host(graphed.forward(host), lg.data());
    for (size_t r = 0; r < batch; ++r) {
      const float* e = le.data() + r * vocab;
      const float* g = lg.data() + r * vocab;
      const auto [lo, hi] = std::minmax_element(e, e + vocab);
      const double spread = *hi - *lo;
      double err = 0;
      for (int v = 0; v < vocab; ++v) err = std::max(err, double(std::fabs(e[v] - g[v])));
      worst = std::max(worst, err / spread);
      EXPECT_LE(err, 5e-2 * spread) << "step " << step << " row " << r;
      std::vector<float> sorted(e, e + vocab);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      const int32_t want = int32_t(hi - e);
      const int32_t got = int32_t(std::max_element(g, g + vocab) - g);
      if (sorted[0] - sorted[1] > 2 * err) {
        ++clear;
        EXPECT_EQ(got, want) << "step " << step << " row " << r;
      }
      ++compared;
      tokens[r].push_back(want);
    }
  }
  std::printf("%s: %d rows through decode graphs, worst error %.2e of the spread, %d with a clear "
              "greedy margin\n",
              GetParam().c_str(), compared, worst, clear);
  EXPECT_EQ(graphed.decode_graphs()->replays(), 1 + steps);
  EXPECT_GE(clear, compared / 2);
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeGraphsOnGpu,
                         ::testing::Values("trident-tiny", "trident-tiny-fp8"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
}  // namespace trident::gpu_test
