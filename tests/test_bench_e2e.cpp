// `trident bench e2e` as a user runs it: the tiny preset on the CPU, on one rank and on two CPU
// ranks, writing its JSON (shape and figures that agree with each other), its plot and its
// Markdown section.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace {

using json = nlohmann::json;

struct CommandResult {
  int status;
  std::string output;
};

CommandResult run(const std::string& args) {
  const std::string cmd = "OMP_NUM_THREADS=1 " + std::string(TRIDENT_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CommandResult r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  r.status = pclose(p);
  return r;
}

std::string read(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Small enough for CI's two cores: 16-token contexts, batches of 2 and 3 requests, a step of two
// whole prompts, one timed step.
const std::string kQuick =
    "bench e2e --preset tiny --device cpu --context 16 --decode-batches 2,3 --prefill-tokens 32 "
    "--steps 1 --warmup 0 --steering-iterations 2 --steering-tokens 8";

std::filesystem::path fresh_dir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / name;
  std::filesystem::remove_all(dir);
  return dir;
}

void expect_sane_case(const json& c, int ranks) {
  SCOPED_TRACE(c.dump().substr(0, 200));
  EXPECT_GT(c["step_ms"].get<double>(), 0);
  EXPECT_GT(c["floor_ms"].get<double>(), 0);
  EXPECT_GT(c["normalized_tokens_per_s_per_gpu"].get<double>(), 0);
  EXPECT_GT(c["normalized_floor_tokens_per_s_per_gpu"].get<double>(), 0);
  ASSERT_EQ(int(c["ranks"].size()), ranks);
  // The case's figures are the means of its ranks'.
  double over_floor = 0, tokens_per_s = 0;
  for (const json& r : c["ranks"]) {
    const double step_ms = r["step_ms"], floor_ms = r["floor_ms"];
    EXPECT_NEAR(r["tokens_per_s"].get<double>(), c["tokens"].get<double>() / step_ms * 1e3,
                1e-6 * r["tokens_per_s"].get<double>());
    over_floor += step_ms / floor_ms / ranks;
    tokens_per_s += r["tokens_per_s"].get<double>() / ranks;
  }
  EXPECT_NEAR(c["step_over_floor"].get<double>(), over_floor, 1e-6 * over_floor);
  EXPECT_NEAR(c["tokens_per_s_per_gpu"].get<double>(), tokens_per_s, 1e-6 * tokens_per_s);
  for (const json& r : c["ranks"]) {
    double sum = 0;
    for (const auto& [stage, ms] : r["stages_ms"].items()) {
      EXPECT_GE(ms.get<double>(), 0) << stage;
      sum += ms.get<double>();
    }
    EXPECT_NEAR(sum, r["marked_step_ms"].get<double>(), 1e-6 * sum);
    for (const char* stage : {"attention", "gate", "experts", "mlp", "rest"})
      EXPECT_GT(r["stages_ms"][stage].get<double>(), 0) << stage;
    if (ranks == 1) {
      EXPECT_EQ(r["stages_ms"]["dispatch"].get<double>(), 0);
      EXPECT_EQ(r["stages_ms"]["combine"].get<double>(), 0);
    } else {
      EXPECT_GT(r["stages_ms"]["dispatch"].get<double>(), 0);
      EXPECT_GT(r["stages_ms"]["combine"].get<double>(), 0);
    }
    EXPECT_GT(r["per_layer_ms"]["dense"].get<double>(), 0);
    EXPECT_GT(r["per_layer_ms"]["moe"].get<double>(), 0);
    EXPECT_GT(r["bytes"].get<double>(), 0);
    EXPECT_GT(r["fp8_flops"].get<double>(), 0);
  }
  // Every token of every rank chooses 4 of the 16 experts in each MoE layer.
  const json& load = c["routing_load"];
  EXPECT_EQ(load["choices"].get<int>(), c["tokens"].get<int>() * ranks * 4);
  EXPECT_GE(load["max_over_mean"].get<double>(), 1.0);
  EXPECT_LE(load["experts_touched"].get<int>(), 16);
}

}  // namespace

TEST(BenchE2e, TinyPresetOnTheCpuWritesConsistentJsonAPlotAndATable) {
  const std::filesystem::path dir = fresh_dir("trident-bench-e2e");
  const std::filesystem::path results = dir.string() + "-results.md";
  std::filesystem::remove(results);
  const CommandResult r = run(kQuick + " --out " + dir.string() + " --results " +
                              results.string() + " --commit abc1234");
  ASSERT_EQ(r.status, 0) << r.output;

  const json j = json::parse(read(dir / "e2e.json"));
  EXPECT_EQ(j["benchmark"], "e2e");
  EXPECT_EQ(j["preset"], "tiny");
  EXPECT_EQ(j["ranks"], 1);
  EXPECT_EQ(j["commit"], "abc1234");
  EXPECT_EQ(j["cuda_graphs"], false);
  EXPECT_EQ(j["layers"]["built"], 4);
  EXPECT_EQ(j["layers"]["dense"], 1);
  EXPECT_EQ(j["layers"]["normalized_to"], 4);
  EXPECT_GT(j["ceilings"]["copy_gbps"].get<double>(), 0);
  EXPECT_GT(j["ceilings"]["fp8_tflops"].get<double>(), 0);
  ASSERT_EQ(j["cases"].size(), 6u);  // 2 decode batches + 1 prefill step, for each routing
  const char* phases[] = {"decode", "decode", "prefill"};
  for (int i = 0; i < 6; ++i) {
    const json& c = j["cases"][i];
    EXPECT_EQ(c["phase"], phases[i % 3]);
    EXPECT_EQ(c["routing"], i < 3 ? "uniform" : "zipf");
    EXPECT_EQ(c["tokens"], i % 3 == 0 ? 2 : i % 3 == 1 ? 3 : 32);
    expect_sane_case(c, 1);
  }

  const std::string svg = read(dir / "e2e.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("requests per GPU"), std::string::npos);
  EXPECT_NE(svg.find("zipf, measured"), std::string::npos);
  EXPECT_NE(svg.find("<path"), std::string::npos);

  const std::string md = read(dir / "e2e.md");
  EXPECT_NE(md.find("commit abc1234"), std::string::npos);
  EXPECT_NE(md.find("| decode | uniform | 2 req × 16 ctx |"), std::string::npos) << md;
  EXPECT_NE(md.find("| prefill | zipf | 2 × 16-token prompts |"), std::string::npos) << md;
  EXPECT_EQ(read(results), "\n" + md);
}

TEST(BenchE2e, TwoCpuRanksEachRunTheirBatchAndExchangeTokens) {
  const std::filesystem::path dir = fresh_dir("trident-bench-e2e-ep2");
  const CommandResult r = run(kQuick + " --routing uniform --ep 2 --out " + dir.string());
  if (r.output.find("without MPI") != std::string::npos) GTEST_SKIP() << "built without MPI";
  ASSERT_EQ(r.status, 0) << r.output;
  const json j = json::parse(read(dir / "e2e.json"));
  EXPECT_EQ(j["ranks"], 2);
  ASSERT_EQ(j["cases"].size(), 3u);
  for (const json& c : j["cases"]) expect_sane_case(c, 2);
}

TEST(BenchE2e, TooManyLayersForTheHostAreRefusedBeforeAnythingIsMade) {
  const CommandResult r = run("bench e2e --preset deepseek-v3 --device cpu --layers 61");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("of host memory"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--layers"), std::string::npos) << r.output;
}
