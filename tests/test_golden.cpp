// The whole model on the CPU backend against HuggingFace transformers' DeepseekV3ForCausalLM /
// DeepseekV2ForCausalLM (fixtures made by tools/make_golden.py): logits for every prompt position
// of a batched prefill, then 8 batched decode steps fed the reference's greedy tokens.
//
// Tolerance, as the largest logit error over the spread of the reference row's logits: both
// sides compute in f32 from identical weights (BF16 upcast, or FP8 times its block scale; FP8
// fixtures also quantize activations to e4m3 as DeepSeek does), so rows differ only by summation
// order and libm. Every row must be within 1e-4 (measured: below 4e-6), except FP8 rows the
// fixture marks as sensitive (a rounding of theirs sits within f32 noise of a tie), which may
// differ by three times what the fixture saw such noise do to them. Top-k routing and FP8
// rounding are discontinuous, so the fixtures' prompts are drawn to keep every routing decision
// clear of ties (tools/make_golden.py); without that, one near-tied token can flip an expert and
// move every later row of its sequence by a few percent in either implementation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "model/checkpoint.h"
#include "model/deepseek_v3.h"
#include "model/safetensors.h"
#include "runtime/step_builder.h"

using namespace trident;
namespace fs = std::filesystem;

namespace {

struct Golden {
  std::vector<std::vector<int32_t>> prompts, decode_tokens;
  std::shared_ptr<SafetensorsFile> logits;
  bool fp8 = false;
};

Golden read_golden(const fs::path& dir) {
  Golden g;
  std::ifstream f(dir / "golden.json");
  auto j = nlohmann::json::parse(f);
  g.prompts = j.at("prompts").get<decltype(g.prompts)>();
  g.decode_tokens = j.at("decode_tokens").get<decltype(g.decode_tokens)>();
  g.fp8 = j.at("precision") == "fp8";
  g.logits = SafetensorsFile::open(dir / "golden.safetensors");
  return g;
}

struct RowError {
  double error;    // largest logit error over the reference row's spread
  double allowed;  // the bound for this row
};

class GoldenModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::path(TRIDENT_TEST_DATA) / "golden" / GetParam();
    golden_ = read_golden(dir_);
    backend_ = make_cpu_backend();
    ckpt_ = std::make_unique<Checkpoint>(Checkpoint::open(dir_));
    ModelConfig config = ModelConfig::from_file(dir_ / "config.json");
    ASSERT_EQ(config.fp8, golden_.fp8);
    model_ = std::make_unique<DeepseekV3>(config, load_weights(*ckpt_, config, *backend_), *backend_);
    cache_ = make_kv_cache(*backend_, model_->config(), 16);
  }

  // Compares rows of `got` [n, vocab] with the reference rows; returns each row's error relative
  // to the reference's spread. Where a row is within bound, its greedy token must agree too.
  // `sensitivity` (FP8 fixtures): how far each reference row moves when its FP8 roundings are
  // nudged by f32-sized noise; such a row may differ by that much in any correct implementation.
  std::vector<RowError> compare(const float* got, const Tensor& ref, int64_t row0, int64_t n,
                              const std::string& what, const std::string& sensitivity = "") {
    Tensor sens;
    if (!sensitivity.empty() && golden_.logits->has(sensitivity)) sens = golden_.logits->tensor(sensitivity);
    const int64_t V = ref.dim(-1);
    std::vector<RowError> errs;
    for (int64_t r = 0; r < n; ++r) {
      const float* want = ref.ptr<float>() + (row0 + r) * V;
      auto [lo, hi] = std::minmax_element(want, want + V);
      double spread = *hi - *lo, err = 0;
      for (int64_t v = 0; v < V; ++v) err = std::max(err, double(std::fabs(got[r * V + v] - want[v])));
      double allowed = sens.defined() ? std::max(kRowBound, 3.0 * sens.ptr<float>()[row0 + r]) : kRowBound;
      errs.push_back({err / spread, allowed});
      // Same argmax unless the reference's best two are closer than the row's error.
      std::vector<float> sorted(want, want + V);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      if (err / spread < kRowBound && sorted[0] - sorted[1] > 2 * err) {
        EXPECT_EQ(std::max_element(got + r * V, got + (r + 1) * V) - (got + r * V),
                  std::max_element(want, want + V) - want)
            << what << " row " << r;
      }
    }
    return errs;
  }

  std::vector<float> run(const std::vector<StepChunk>& chunks) {
    StepInput in = upload_step(*backend_, build_step(chunks));
    Tensor logits = model_->forward(in, cache_);
    std::vector<float> host(logits.numel());
    backend_->to_host(logits, host.data());
    return host;
  }

  fs::path dir_;
  Golden golden_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<DeepseekV3> model_;
  KvCache cache_;
  static constexpr double kRowBound = 1e-4;

  // Applies the bound above to every row of a test, and reports the figures.
  void check_rows(const std::vector<RowError>& rows) {
    ASSERT_FALSE(rows.empty());
    std::vector<double> errs;
    int widened = 0;
    for (const RowError& r : rows) {
      EXPECT_LT(r.error, r.allowed);
      errs.push_back(r.error);
      widened += r.allowed > kRowBound;
    }
    std::sort(errs.begin(), errs.end());
    std::printf("%s: %zu rows (%d FP8-sensitive, bound widened), median error/spread %.1e, worst %.1e\n",
                GetParam().c_str(), errs.size(), widened, errs[errs.size() / 2], errs.back());
  }
};

TEST_P(GoldenModel, BatchedPrefillThenDecodeMatchesTransformers) {
  const int n = int(golden_.prompts.size());
  const int V = model_->config().vocab_size;
  std::vector<std::vector<int32_t>> seqs = golden_.prompts, pages(n);
  for (int i = 0; i < n; ++i) pages[i] = {2 * i, 2 * i + 1};  // room for 128 tokens each

  std::vector<StepChunk> prefill;
  for (int i = 0; i < n; ++i) prefill.push_back({&seqs[i], 0, int(seqs[i].size()), &pages[i], true, true});
  std::vector<float> got = run(prefill);
  int64_t row = 0;
  std::vector<RowError> errs;
  auto add = [&errs](const std::vector<RowError>& e) { errs.insert(errs.end(), e.begin(), e.end()); };
  for (int i = 0; i < n; ++i) {
    Tensor ref = golden_.logits->tensor("prefill." + std::to_string(i));
    add(compare(&got[row * V], ref, 0, ref.dim(0), "prefill " + std::to_string(i),
                "prefill_sensitivity." + std::to_string(i)));
    row += ref.dim(0);
  }
  for (size_t s = 0; s < golden_.decode_tokens[0].size(); ++s) {
    std::vector<StepChunk> step;
    for (int i = 0; i < n; ++i) {
      seqs[i].push_back(golden_.decode_tokens[i][s]);
      step.push_back({&seqs[i], int(seqs[i].size()) - 1, 1, &pages[i], true});
    }
    got = run(step);
    Tensor ref = golden_.logits->tensor("decode." + std::to_string(s));
    add(compare(got.data(), ref, 0, n, "decode step " + std::to_string(s),
                "decode_sensitivity." + std::to_string(s)));
  }
  check_rows(errs);
}

TEST_P(GoldenModel, ChunkedPrefillMixedWithDecodesMatchesTransformers) {
  const int n = int(golden_.prompts.size());
  const int V = model_->config().vocab_size;
  std::vector<std::vector<int32_t>> seqs = golden_.prompts, pages(n);
  for (int i = 0; i < n; ++i) pages[i] = {15 - 2 * i, 14 - 2 * i};  // pages in another order
  const int last = n - 1, len = int(seqs[last].size()), first_chunk = len / 2 + 5;

  // Step 1: prefill all but the last prompt, and the first chunk of the last one.
  std::vector<StepChunk> step1;
  for (int i = 0; i < last; ++i) step1.push_back({&seqs[i], 0, int(seqs[i].size()), &pages[i], true});
  step1.push_back({&seqs[last], 0, first_chunk, &pages[last], true, true});
  std::vector<float> got = run(step1);
  Tensor ref_last = golden_.logits->tensor("prefill." + std::to_string(last));
  const std::string last_sens = "prefill_sensitivity." + std::to_string(last);
  std::vector<RowError> errs = compare(&got[int64_t(last) * V], ref_last, 0, first_chunk, "first chunk", last_sens);

  // Step 2: the rest of the last prompt beside the first decode step of the others.
  std::vector<StepChunk> step2;
  for (int i = 0; i < last; ++i) {
    seqs[i].push_back(golden_.decode_tokens[i][0]);
    step2.push_back({&seqs[i], int(seqs[i].size()) - 1, 1, &pages[i], true});
  }
  step2.push_back({&seqs[last], first_chunk, len - first_chunk, &pages[last], true, true});
  got = run(step2);
  Tensor ref_decode = golden_.logits->tensor("decode.0");
  for (auto e : {compare(got.data(), ref_decode, 0, last, "decodes beside a chunk", "decode_sensitivity.0"),
                 compare(&got[int64_t(last) * V], ref_last, first_chunk, len - first_chunk, "second chunk", last_sens)})
    errs.insert(errs.end(), e.begin(), e.end());
  check_rows(errs);
}

std::vector<std::string> fixtures() {
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(fs::path(TRIDENT_TEST_DATA) / "golden"))
    if (fs::exists(e.path() / "golden.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenModel, ::testing::ValuesIn(fixtures()),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
