// Expert load: the CPU counting op, the counts a model run records, the load file and the
// placement file (what `trident eplb` writes and --expert-placement reads).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"
#include "parallel/expert_load.h"
#include "parallel/placement_file.h"
#include "runtime/engine.h"

using namespace trident;
namespace fs = std::filesystem;

namespace {

ModelConfig moe_config(int layers, int dense, int experts, int top_k, int groups) {
  ModelConfig c;
  c.num_hidden_layers = layers;
  c.first_k_dense_replace = dense;
  c.n_routed_experts = experts;
  c.num_experts_per_tok = top_k;
  c.n_group = groups;
  return c;
}

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()) + ".json");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(AddExpertCounts, AddsEachIdToItsExpertAndSkipsIdsOutsideTheRange) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  Tensor ids = cpu_tensor(DType::I32, {3, 2});
  const int32_t v[] = {2, 0, 2, -1, 5, 2};
  std::copy(v, v + 6, ids.ptr<int32_t>());
  Tensor counts = cpu_tensor(DType::I64, {5});
  counts.ptr<int64_t>()[4] = 40;  // counts add to what is there
  cpu->add_expert_counts(ids, counts);
  EXPECT_EQ(std::vector<int64_t>(counts.ptr<int64_t>(), counts.ptr<int64_t>() + 5),
            (std::vector<int64_t>{1, 0, 3, 0, 40}));
}

TEST(ExpertLoad, ARunCountsTopKExpertsPerTokenInEveryMoeLayerAndNoneInDenseOnes) {
  EngineOptions eo;
  eo.model_dir = fs::path(TRIDENT_MODELS_DIR) / "trident-tiny";
  Engine engine(eo);
  const ModelConfig& c = engine.config();
  GenerateOptions go;
  go.max_new_tokens = 5;
  go.stop_at_eos = false;
  // 6 prompt tokens, then 4 decode steps: 10 tokens through every layer.
  engine.generate({0, 17, 230, 41, 9, 1000}, go);
  engine.expert_load().finish();
  const ExpertLoad load = engine.expert_load().totals();
  EXPECT_EQ(load.tokens(), 10);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    int64_t sum = 0;
    for (int e = 0; e < c.n_routed_experts; ++e) sum += load.count(l, e);
    EXPECT_EQ(sum, c.is_moe_layer(l) ? 10 * c.num_experts_per_tok : 0) << "layer " << l;
  }
  const ExpertLoadSummary s = engine.expert_load().summary();
  EXPECT_EQ(s.assignments, 10 * c.num_experts_per_tok * int64_t(load.moe_layers().size()));
  EXPECT_EQ(s.expert_imbalance.size(), load.moe_layers().size());
  EXPECT_TRUE(s.rank_imbalance.empty());  // one rank
  EXPECT_NE(engine.expert_load().request_rebalance().find("one rank"), std::string::npos);
}

TEST(ExpertLoad, FileRoundTripsAndNamesWhatIsWrong) {
  ExpertLoad load(moe_config(4, 1, 8, 2, 4));
  for (int e = 0; e < 8; ++e) load.counts()[1 * 8 + e] = 10 + e, load.counts()[3 * 8 + e] = 2 * e;
  const fs::path file = temp_file("expert-load");
  load.write(file);
  const ExpertLoad back = ExpertLoad::read(file);
  EXPECT_EQ(back.counts(), load.counts());
  EXPECT_EQ(back.moe_layers(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(back.tokens(), (10 + 17) * 8 / 2 / 2);  // layer 1's 108 choices, 2 per token
  EXPECT_EQ(back.n_groups(), 4);

  nlohmann::json j = load.to_json();
  j["layers"][0]["counts"].erase(0);
  EXPECT_NE(
      error_of([&] { ExpertLoad::from_json(j, "x.json"); }).find("layer 1 has 7 counts for 8"),
      std::string::npos);
  j = load.to_json();
  j["format"] = "something-else";
  EXPECT_NE(error_of([&] { ExpertLoad::from_json(j, "x.json"); }).find("not an expert load file"),
            std::string::npos);
  fs::remove(file);
}

TEST(PlacementFile, WhatTridentEplbWritesStartsARunWithTheSamePlacements) {
  const ModelConfig c = moe_config(3, 1, 16, 4, 4);
  ExpertLoad load(c);
  for (int l : {1, 2})
    for (int e = 0; e < 16; ++e) load.counts()[l * 16 + e] = (e == 3 + l) ? 500 : 10 + e;
  const PlacementShape shape{4, 4, 4, 1};
  const std::vector<LayerPlacementPlan> plans = plan_placements(load, shape);
  const fs::path file = temp_file("expert-placement");
  write_placement_file(file, shape, 16, plans);
  const std::vector<ExpertPlacement> placements = read_placement_file(file, c, 4, 0);
  ASSERT_EQ(placements.size(), 3u);
  for (const LayerPlacementPlan& p : plans)
    for (int r = 0; r < 4; ++r)
      EXPECT_EQ(placements[p.layer].experts_of(r), p.placement.experts_of(r))
          << p.layer << " " << r;
  // The hot expert of each layer has a copy on more than one rank.
  EXPECT_GT(placements[1].ranks_of(4).size(), 1u);
  EXPECT_GT(placements[2].ranks_of(5).size(), 1u);

  EXPECT_NE(
      error_of([&] { read_placement_file(file, c, 2, 0); }).find("on 4 ranks, this run has 2"),
      std::string::npos);
  EXPECT_NE(error_of([&] { read_placement_file(file, c, 4, 8); }).find("--ep-redundant-experts 8"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              read_placement_file(file, moe_config(4, 1, 16, 4, 4), 4, 0);
            }).find("no placement for MoE layer 3"),
            std::string::npos);
  // A map that disagrees with physical_to_logical is named.
  nlohmann::json j;
  std::ifstream(file) >> j;
  j["layers"][0]["logical_count"][0] = 3;
  std::ofstream(file) << j.dump();
  EXPECT_NE(
      error_of([&] { read_placement_file(file, c, 4, 0); }).find("logical_count says expert 0"),
      std::string::npos);
  fs::remove(file);
}
