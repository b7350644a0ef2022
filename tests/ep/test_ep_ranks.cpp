// Expert parallelism across real ranks: each test starts trident_ep_rank (or trident) under
// mpirun, oversubscribed on however few cores there are, and checks what the ranks report.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

namespace {

struct RankRun {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // stdout and stderr together
  double seconds = 0;
};

// `stderr_too`: capture stderr with stdout; otherwise it is dropped.
RankRun shell(const std::string& command, bool stderr_too = true) {
  setenv("OMP_NUM_THREADS", "1", 1);  // ranks share the cores; one thread each
  auto t0 = std::chrono::steady_clock::now();
  FILE* p = popen((command + (stderr_too ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  RankRun r;
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = pclose(p);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

RankRun ranks(int n, const std::string& args) {
  std::string mpirun = std::string(TRIDENT_MPIRUN) + " -np " + std::to_string(n) +
                       " --oversubscribe --bind-to none" +
                       (geteuid() == 0 ? " --allow-run-as-root" : "");
  return shell(mpirun + " " + TRIDENT_EP_RANK + " " + args);
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// A model directory with a tokenizer for the command-line tests: the shipped small model, or a
// golden fixture; empty when there is none.
std::string model_with_tokenizer() {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates = {fs::path(TRIDENT_MODELS_DIR) / "trident-tiny"};
  fs::path golden = fs::path(TRIDENT_TEST_DATA) / "golden";
  if (fs::is_directory(golden))
    for (const auto& d : fs::directory_iterator(golden)) candidates.push_back(d.path());
  for (const fs::path& d : candidates)
    if (fs::exists(d / "config.json") && fs::exists(d / "tokenizer.json")) return d.string();
  return "";
}

// "rank R of N: ..., T tokens received ..." -> T
long tokens_received(const std::string& output, int rank) {
  std::smatch m;
  std::regex re("rank " + std::to_string(rank) + " of \\d+: .*?, (\\d+) tokens received");
  return std::regex_search(output, m, re) ? std::stol(m[1]) : -1;
}

}  // namespace

TEST(EpRanks, TwoRanksGiveTheLogitsAndTokensOfOne) {
  RankRun r = ranks(2, "--prompt-tokens 13,7");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 2) << r.output;
}

TEST(EpRanks, FourRanksWithDifferentBatchesAndAnIdleRankGiveTheLogitsOfOne) {
  // Rank 1 has no request: it only serves its experts. Ranks decode different numbers of steps.
  RankRun r = ranks(4, "--prompt-tokens 17,0,5,1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
  EXPECT_NE(r.output.find("rank 1 of 4: 0 sequences"), std::string::npos) << r.output;
  EXPECT_GT(tokens_received(r.output, 1), 0) << r.output;
}

TEST(EpRanks, SkewedRoutingToOneRanksExpertsLeavesTheOthersNothingToCompute) {
  RankRun r = ranks(4, "--prompt-tokens 9,4,0,6 --skew");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
  EXPECT_GT(tokens_received(r.output, 0), 0) << r.output;
  for (int rank = 1; rank < 4; ++rank) EXPECT_EQ(tokens_received(r.output, rank), 0) << r.output;
}

TEST(EpRanks, RedundantExpertCopiesGiveTheLogitsOfOne) {
  RankRun r = ranks(4, "--prompt-tokens 9,4,3,6 --redundant 4");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
}

TEST(EpRanks, Fp8CheckpointSendsFp8TokensAndKeepsTheLogits) {
  // FP8 experts quantize their input exactly as the payload is quantized; what remains is the
  // order of sums, which FP8 re-quantization downstream can amplify, hence a looser bound.
  RankRun r = ranks(2, "--prompt-tokens 20,11 --fp8 --tolerance 1e-3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, "(fp8 payload)"), 2) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 2) << r.output;
}

// The golden fixtures (checkpoints on disk, several expert groups, BF16 and FP8): each rank loads
// only its experts and takes every R-th golden prompt, so batches differ in size from rank to rank.
class EpFixture : public ::testing::TestWithParam<std::string> {};

// Every rank compares each step's logits with a model holding all experts in the same process:
// the largest difference, over the spread (max - min) of that row of reference logits, stays
// under 1e-4 in every row (--tolerance), and every greedy token agrees unless the reference's
// best two logits are closer than twice that difference. EP 1 runs the same exchanges with one
// rank.
TEST_P(EpFixture, OneTwoAndFourRanksGiveTheLogitsAndTokensOfOne) {
  const std::string dir = std::string(TRIDENT_TEST_DATA) + "/golden/" + GetParam();
  for (int n : {1, 2, 4}) {
    RankRun r = ranks(n, "--model " + dir);
    EXPECT_EQ(r.exit_code, 0) << n << " ranks\n" << r.output;
    EXPECT_EQ(count(r.output, ": match"), n) << n << " ranks\n" << r.output;
  }
}

std::vector<std::string> fixtures() {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  fs::path golden = fs::path(TRIDENT_TEST_DATA) / "golden";
  if (fs::is_directory(golden))
    for (const auto& d : fs::directory_iterator(golden))
      if (fs::exists(d.path() / "config.json")) names.push_back(d.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

INSTANTIATE_TEST_SUITE_P(Golden, EpFixture, ::testing::ValuesIn(fixtures()), [](const auto& info) {
  std::string s = info.param;
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
});

TEST(EpRanks, RedundantCopiesOfACheckpointsExpertsGiveTheLogitsOfOne) {
  const std::vector<std::string> all = fixtures();
  if (all.empty()) GTEST_SKIP() << "no fixture in tests/data/golden";
  RankRun r = ranks(
      4, "--model " + std::string(TRIDENT_TEST_DATA) + "/golden/" + all.front() + " --redundant 4");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
}

TEST(EpRanks, EachRankReadsOnlyItsOwnExpertsFromTheCheckpoint) {
  const std::vector<std::string> all = fixtures();
  if (all.empty()) GTEST_SKIP() << "no fixture in tests/data/golden";
  const std::string model = std::string(TRIDENT_TEST_DATA) + "/golden/" + all.back();
  // Each rank's copy of the checkpoint has the other ranks' experts as poison shards: opening
  // any of them fails the load. Then again with redundant copies, which each rank also loads.
  RankRun r = ranks(4, "--model " + model + " --poison-other-experts");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(", (\\d+) of (\\d+) expert shards poisoned")))
      << r.output;
  // Three in four of the model's experts, and any multi-token-prediction layer's.
  EXPECT_GE(std::stoi(m[1]) * 4, std::stoi(m[2]) * 3) << r.output;
  r = ranks(4, "--model " + model + " --poison-other-experts --redundant 4");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
}

TEST(EpRanks, APoisonedExpertShardFailsTheLoadThatReadsIt) {
  // The check above can fail: a rank that loads every expert from its poisoned copy stops.
  const std::vector<std::string> all = fixtures();
  if (all.empty()) GTEST_SKIP() << "no fixture in tests/data/golden";
  RankRun r = ranks(2, "--model " + std::string(TRIDENT_TEST_DATA) + "/golden/" + all.back() +
                           " --poison-other-experts --load-every-expert");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("error on rank \\d of 2: .*expert-\\d+-\\d+")))
      << r.output;
}

TEST(EpRanks, BatchesLargerThanOneExchangeGoInRoundsAndGiveTheLogitsOfOne) {
  // 17 prompt tokens in exchanges of at most 4: 5 rounds per MoE layer in the prefill, on every
  // rank, the idle one included.
  RankRun r = ranks(3, "--prompt-tokens 17,0,5 --max-exchange-tokens 4 --decode-steps 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 3) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex("rank 1 of 3: .*?, (\\d+) exchanges")))
      << r.output;
  // 2 MoE layers; prefill 5 rounds; then 3 decode steps of one round (rank 2 decodes longest).
  EXPECT_EQ(std::stoi(m[1]), 2 * (5 + 3)) << r.output;
}

TEST(EpFaults, ARankThatHangsWhileLoadingIsNamedWhenTheLoadTimeoutExpires) {
  RankRun r = ranks(
      3, "--prompt-tokens 5,4,3 --fault hang-loading --timeout-ms 1000 --load-timeout-ms 2000");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 did not arrive at 'weights loaded' within 2 s"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("--ep-load-timeout"), std::string::npos)
      << r.output;
  EXPECT_LT(r.seconds, 20.0) << r.output;
}

TEST(EpFaults, ARankThatExitsStopsTheOthersWellWithinTheTimeoutAndIsNamed) {
  RankRun r = ranks(3, "--prompt-tokens 9,4,3 --fault exit --timeout-ms 30000");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("error on rank 1: this rank is exiting"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30.0) << r.output;
}

TEST(EpFaults, ARankThatIsKilledStopsTheOthersAndIsNamed) {
  RankRun r = ranks(3, "--prompt-tokens 9,4,3 --fault kill --timeout-ms 30000");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("process rank 1"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30.0) << r.output;
}

TEST(EpFaults, ARankThatHangsIsNamedByTheOthersWhenTheTimeoutExpires) {
  RankRun r = ranks(3, "--prompt-tokens 9,4,3 --fault hang --timeout-ms 2000");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 did not arrive at 'dispatch counts, layer 2' within 2 s"),
            std::string::npos)
      << r.output;
  EXPECT_GE(r.seconds, 2.0);
  EXPECT_LT(r.seconds, 20.0) << r.output;
}

TEST(EpCommand, EpTwoStartsTwoRanksUnderMpirunAndStopsThemAllOnAnError) {
  // A directory with no model: each rank fails on its own and names itself; none waits forever.
  std::filesystem::path empty = std::filesystem::temp_directory_path() / "trident-ep-empty-model";
  std::filesystem::create_directories(empty);
  RankRun r = shell(std::string(TRIDENT_BINARY) + " generate --model " + empty.string() +
                    " --prompt hi --ep 2 --ep-timeout 20");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(" of 2: "), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 20.0) << r.output;
}

TEST(EpCommand, GenerateGivesTheSameTextWithOneTwoAndFourRanks) {
  const std::string model = model_with_tokenizer();
  if (model.empty()) GTEST_SKIP() << "no model with a tokenizer in models/ or tests/data/golden/";
  const std::string base = std::string(TRIDENT_BINARY) + " generate --model " + model +
                           " --prompt 'The quick brown fox' --max-new-tokens 12 --ignore-eos";
  RankRun one = shell(base + " --ep 1", false);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  ASSERT_FALSE(one.output.empty());
  for (int n : {2, 4}) {
    RankRun many = shell(base + " --ep " + std::to_string(n), false);
    EXPECT_EQ(many.exit_code, 0) << many.output;
    EXPECT_EQ(many.output, one.output) << n << " ranks";
  }
}

// --- The expert load balancer across ranks ---

namespace {

// "..., R rebalances moving C expert copies, ..." of `rank` -> {R, C}
std::pair<long, long> rebalances(const std::string& output, int rank) {
  std::smatch m;
  std::regex re("rank " + std::to_string(rank) +
                " of \\d+: .*?, (\\d+) rebalances moving (\\d+) expert copies");
  if (!std::regex_search(output, m, re)) return {-1, -1};
  return {std::stol(m[1]), std::stol(m[2])};
}

// A placement file for `ranks` ranks from the shipped model's expert load on a prompt, made by
// the commands a user runs: generate --expert-load-file, then trident eplb.
std::string placement_file(const std::string& model, int ranks, int redundant) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("trident-eplb-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string load = (dir / "load.json").string();
  const std::string placement = (dir / ("placement-" + std::to_string(ranks) + ".json")).string();
  RankRun g = shell(std::string(TRIDENT_BINARY) + " generate --model " + model +
                    " --prompt 'The quick brown fox' --max-new-tokens 8 --expert-load-file " +
                    load);
  EXPECT_EQ(g.exit_code, 0) << g.output;
  RankRun p = shell(std::string(TRIDENT_BINARY) + " eplb --load " + load + " --ranks " +
                    std::to_string(ranks) + " --redundant " + std::to_string(redundant) + " -o " +
                    placement);
  EXPECT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("placement written to"), std::string::npos) << p.output;
  return placement;
}

}  // namespace

TEST(EpRanks, RebalancingWhileSteppingKeepsTheLogitsOfOneAndSpreadsSkewedTokens) {
  // Every token goes to rank 0's experts; every 2 steps the balancer moves experts (with 4
  // redundant copies), so the other ranks compute some of them, and every step's logits still
  // match a model holding every expert.
  RankRun r = ranks(4, "--prompt-tokens 9,4,3,6 --skew --redundant 4 --eplb-interval 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_GE(rebalances(r.output, rank).first, 1) << r.output;
    EXPECT_GT(rebalances(r.output, rank).second, 0) << r.output;
  }
  for (int rank = 1; rank < 4; ++rank) EXPECT_GT(tokens_received(r.output, rank), 0) << r.output;
}

TEST(EpRanks, RebalancingLoadsACheckpointsExpertsAndKeepsItsLogits) {
  const std::vector<std::string> all = fixtures();
  if (all.empty()) GTEST_SKIP() << "no fixture in tests/data/golden";
  RankRun r = ranks(2, "--model " + std::string(TRIDENT_TEST_DATA) + "/golden/" + all.back() +
                           " --eplb-interval 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 2) << r.output;
  EXPECT_GT(rebalances(r.output, 0).second, 0) << r.output;
}

TEST(EpRanks, EachRankReadsOnlyTheExpertsItsPlacementFileGivesIt) {
  const std::string model = model_with_tokenizer();
  if (model.empty()) GTEST_SKIP() << "no model with a tokenizer in models/ or tests/data/golden/";
  const std::string placement = placement_file(model, 4, 4);
  // The other ranks' experts are poison in each rank's copy: the run reads exactly what the
  // file's slots hold, redundant copies included.
  RankRun r = ranks(4, "--model " + model + " --placement " + placement +
                           " --prompt-tokens 9,4,3,6 --poison-other-experts");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": match"), 4) << r.output;
  EXPECT_NE(r.output.find("expert shards poisoned"), std::string::npos) << r.output;
  // A file for another rank count is refused, naming both.
  RankRun wrong = ranks(2, "--model " + model + " --placement " + placement);
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.output.find("on 4 ranks, this run has 2"), std::string::npos) << wrong.output;
}

TEST(EpRanks, EplbGainTheBusiestRankReceivesFarFewerTokensAfterARebalance) {
  RankRun r = ranks(2, "--eplb-gain --gain-tokens 48 --gain-steps 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch before, after;
  ASSERT_TRUE(std::regex_search(r.output, before, std::regex("before: .*busiest ([\\d.]+)x")))
      << r.output;
  ASSERT_TRUE(std::regex_search(r.output, after, std::regex("after: .*busiest ([\\d.]+)x")))
      << r.output;
  EXPECT_GT(std::stod(before[1]), 1.9) << r.output;  // everything on rank 0
  EXPECT_LT(std::stod(after[1]), 1.2) << r.output;
  // The busiest rank's expert work (CPU time, whatever else the machine runs) about halves.
  std::smatch cpu;
  ASSERT_TRUE(
      std::regex_search(r.output, cpu, std::regex("busiest rank's expert CPU time ([\\d.]+)")))
      << r.output;
  EXPECT_LT(std::stod(cpu[1]), 0.75) << r.output;
}

TEST(EpCommand, GenerateFromAPlacementFileOrMovingExpertsGivesTheTextOfOneRank) {
  const std::string model = model_with_tokenizer();
  if (model.empty()) GTEST_SKIP() << "no model with a tokenizer in models/ or tests/data/golden/";
  const std::string base = std::string(TRIDENT_BINARY) + " generate --model " + model +
                           " --prompt 'The quick brown fox' --max-new-tokens 12 --ignore-eos";
  RankRun one = shell(base + " --ep 1", false);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  RankRun placed = shell(base + " --ep 4 --expert-placement " + placement_file(model, 4, 4), false);
  EXPECT_EQ(placed.exit_code, 0) << placed.output;
  EXPECT_EQ(placed.output, one.output);
  // The log goes to a file: on the terminal it would land between the tokens.
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("trident-eplb-moving-" + std::to_string(getpid()) + ".log"))
                              .string();
  RankRun moving =
      shell("{ " + base + " --ep 2 --ep-redundant-experts 2 --eplb-interval 3 2>" + log + "; }",
            false);
  EXPECT_EQ(moving.exit_code, 0) << moving.output;
  EXPECT_EQ(moving.output, one.output);
  std::ifstream in(log);
  const std::string logged((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(logged.find("expert copies moved"), std::string::npos) << logged;
  std::filesystem::remove(log);
}
