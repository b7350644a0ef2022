// Perplexity of the shipped models on held-out text (tests/data/heldout, never seen in training):
// Trident's CPU figure for the BF16 model equals transformers' on the same tokens within 0.1%,
// the FP8 model stays within 0.8% of BF16, and both CPU figures are pinned so that a change in
// any op that moves them is seen. The reference figures come from tools/perplexity_reference.py
// (see tests/data/heldout/README.md).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "runtime/perplexity.h"
#include "serve/tokenizer.h"

namespace trident {
namespace {

const std::string kModels = TRIDENT_MODELS_DIR;
const std::string kHeldOut = std::string(TRIDENT_TEST_DATA) + "/heldout";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The figure pinned for `model` in reference.json: what both implementations scored.
struct Pinned {
  PerplexityOptions options;
  double transformers = 0;
  double trident_cpu = 0;
};

Pinned pinned(const std::string& model) {
  nlohmann::json ref = read_json(kHeldOut + "/reference.json");
  Pinned p;
  p.options.window = ref["window"];
  p.options.max_windows = ref["max_windows"];
  p.transformers = ref["models"][model]["transformers"];
  p.trident_cpu = ref["models"][model]["trident_cpu"];
  return p;
}

double score(const std::string& model, const PerplexityOptions& o) {
  std::string dir = kModels + "/" + model;
  Tokenizer tokenizer = Tokenizer::from_dir(dir);
  std::vector<int32_t> stream = tokenizer.encode(read_text(kHeldOut + "/austen-test.txt"));
  EngineOptions eo;
  eo.model_dir = dir;
  eo.max_context = o.window + 1;
  eo.kv_pages = perplexity_kv_pages(o);
  Engine engine(eo);
  PerplexityResult r = score_perplexity(engine, stream, tokenizer.bos_id(), o);
  EXPECT_EQ(r.windows, o.max_windows);
  EXPECT_EQ(r.tokens, int64_t(o.max_windows) * o.window);
  return r.perplexity();
}

// Summation order (OpenMP threads, vector width) moves the CPU figure in its last digits only.
constexpr double kPinnedTolerance = 1e-5;

TEST(Perplexity, Bf16ModelMatchesTransformers) {
  Pinned p = pinned("trident-tiny");
  double ppl = score("trident-tiny", p.options);
  EXPECT_NEAR(ppl / p.transformers, 1.0, 1e-3) << "Trident " << ppl << ", transformers "
                                                << p.transformers;
  EXPECT_NEAR(ppl / p.trident_cpu, 1.0, kPinnedTolerance) << ppl;
}

TEST(Perplexity, Fp8ModelStaysCloseToBf16) {
  Pinned fp8 = pinned("trident-tiny-fp8");
  Pinned bf16 = pinned("trident-tiny");
  double ppl = score("trident-tiny-fp8", fp8.options);
  EXPECT_NEAR(ppl / bf16.transformers, 1.0, 8e-3) << "FP8 " << ppl << ", BF16 " << bf16.transformers;
  EXPECT_NEAR(ppl / fp8.trident_cpu, 1.0, kPinnedTolerance) << ppl;
}

// Batching windows into one step must not change any window's figure.
TEST(Perplexity, WindowsPerStepDoesNotChangeTheResult) {
  PerplexityOptions one;
  one.window = 100;
  one.max_windows = 3;
  one.windows_per_step = 1;
  PerplexityOptions three = one;
  three.windows_per_step = 3;
  EXPECT_NEAR(score("trident-tiny", one) / score("trident-tiny", three), 1.0, 1e-6);
}

}  // namespace
}  // namespace trident
