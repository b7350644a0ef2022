#include "parallel/placement_file.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "parallel/expert_parallel.h"

namespace trident {

namespace {

constexpr const char* kFormat = "trident-expert-placement-v1";

template <class T>
T field(const nlohmann::json& j, const char* name, const std::string& where) {
  TRI_CHECK(j.is_object() && j.contains(name), "{}: the field \"{}\" is missing", where, name);
  try {
    return j.at(name).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: the field \"{}\" has the wrong type ({})", where, name, j.at(name).dump());
  }
}

// A layer's placement from its physical_to_logical map, checked against the other two maps.
ExpertPlacement layer_placement(const nlohmann::json& entry, int n_experts, int n_ranks, int slots,
                                const std::string& where) {
  const auto physical = field<std::vector<int>>(entry, "physical_to_logical", where);
  TRI_CHECK(int(physical.size()) == n_ranks * slots,
            "{}: physical_to_logical has {} slots; {} ranks of {} slots need {}", where,
            physical.size(), n_ranks, slots, n_ranks * slots);
  std::vector<std::vector<int>> ranks(n_ranks);
  for (int p = 0; p < n_ranks * slots; ++p) ranks[p / slots].push_back(physical[p]);
  ExpertPlacement placement = ExpertPlacement::from_ranks(n_experts, std::move(ranks));
  if (entry.contains("logical_count")) {
    const auto count = field<std::vector<int>>(entry, "logical_count", where);
    for (int e = 0; e < n_experts; ++e)
      TRI_CHECK(e < int(count.size()) && count[e] == int(placement.ranks_of(e).size()),
                "{}: logical_count says expert {} has {} copies, physical_to_logical holds {}",
                where, e, e < int(count.size()) ? count[e] : -1, placement.ranks_of(e).size());
  }
  if (entry.contains("logical_to_physical")) {
    const auto slots_of = field<std::vector<std::vector<int>>>(entry, "logical_to_physical", where);
    TRI_CHECK(int(slots_of.size()) == n_experts, "{}: logical_to_physical lists {} experts of {}",
              where, slots_of.size(), n_experts);
    for (int e = 0; e < n_experts; ++e) {
      std::vector<int> want;
      for (int p = 0; p < n_ranks * slots; ++p)
        if (physical[p] == e) want.push_back(p);
      std::vector<int> got = slots_of[e];
      std::sort(got.begin(), got.end());
      TRI_CHECK(got == want,
                "{}: logical_to_physical puts expert {} in slots {}, physical_to_logical in {}",
                where, e, fmt::join(got, ","), fmt::join(want, ","));
    }
  }
  return placement;
}

}  // namespace

void write_placement_file(const std::filesystem::path& file, const PlacementShape& shape,
                          int n_experts, const std::vector<LayerPlacementPlan>& layers) {
  TRI_CHECK(!layers.empty(), "an expert placement file needs at least one layer");
  nlohmann::json entries = nlohmann::json::array();
  for (const LayerPlacementPlan& p : layers)
    entries.push_back({{"layer", p.layer},
                       {"policy", std::string(policy_name(p.policy))},
                       {"physical_to_logical", p.physical_to_logical},
                       {"logical_to_physical", p.logical_to_physical},
                       {"logical_count", p.logical_count},
                       {"rank_load", p.rank_load},
                       {"contiguous_rank_load", p.contiguous_rank_load}});
  const nlohmann::json j = {{"format", kFormat},
                            {"n_ranks", shape.n_ranks},
                            {"n_experts", n_experts},
                            {"redundant", shape.redundant},
                            {"slots_per_rank", layers.front().slots_per_rank},
                            {"n_nodes", shape.n_nodes},
                            {"n_groups", shape.n_groups},
                            {"layers", entries}};
  const std::filesystem::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp);
    TRI_CHECK(out.good(), "cannot write the expert placement file {}", tmp.string());
    out << j.dump(1) << "\n";
    TRI_CHECK(out.good(), "writing the expert placement file {} failed", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  TRI_CHECK(!ec, "cannot move {} to {}: {}", tmp.string(), file.string(), ec.message());
}

std::vector<ExpertPlacement> read_placement_file(const std::filesystem::path& file,
                                                 const ModelConfig& config, int n_ranks,
                                                 int redundant) {
  const std::string name = file.string();
  std::ifstream in(file);
  TRI_CHECK(in.good(), "cannot open the expert placement file {}", name);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not JSON: {}", name, e.what());
  }
  const std::string format = field<std::string>(j, "format", name);
  TRI_CHECK(format == kFormat,
            "{}: format \"{}\" is not an expert placement file (\"{}\", as `trident eplb` writes "
            "it)",
            name, format, kFormat);
  const int file_ranks = field<int>(j, "n_ranks", name);
  const int file_experts = field<int>(j, "n_experts", name);
  const int file_redundant = field<int>(j, "redundant", name);
  const int slots = field<int>(j, "slots_per_rank", name);
  TRI_CHECK(file_ranks == n_ranks,
            "{} places experts on {} ranks, this run has {} (--ep); make a placement for {} ranks "
            "with trident eplb --ranks {}",
            name, file_ranks, n_ranks, n_ranks, n_ranks);
  TRI_CHECK(file_experts == config.n_routed_experts,
            "{} places {} experts, the model has {} routed experts", name, file_experts,
            config.n_routed_experts);
  TRI_CHECK(redundant == 0 || redundant == file_redundant,
            "--ep-redundant-experts {} disagrees with the {} redundant copies of {}; leave the "
            "flag out (the file decides)",
            redundant, file_redundant, name);
  TRI_CHECK(slots * n_ranks == file_experts + file_redundant,
            "{}: {} ranks of {} slots do not hold {} experts and {} redundant copies", name,
            n_ranks, slots, file_experts, file_redundant);

  std::vector<ExpertPlacement> placements(
      config.num_hidden_layers,
      ExpertPlacement::contiguous(config.n_routed_experts, n_ranks, file_redundant));
  std::vector<bool> seen(config.num_hidden_layers, false);
  for (const nlohmann::json& entry : field<std::vector<nlohmann::json>>(j, "layers", name)) {
    const int l = field<int>(entry, "layer", name);
    const std::string where = fmt::format("{}, layer {}", name, l);
    TRI_CHECK(l >= 0 && l < config.num_hidden_layers && config.is_moe_layer(l),
              "{}: the model has no MoE layer {} ({} layers, the first {} dense)", name, l,
              config.num_hidden_layers, config.first_k_dense_replace);
    TRI_CHECK(!seen[l], "{}: layer {} is listed twice", name, l);
    seen[l] = true;
    placements[l] = layer_placement(entry, file_experts, n_ranks, slots, where);
  }
  for (int l = 0; l < config.num_hidden_layers; ++l)
    TRI_CHECK(seen[l] || !config.is_moe_layer(l), "{} has no placement for MoE layer {}", name, l);
  return placements;
}

std::vector<ExpertPlacement> initial_placements(const ModelConfig& config, int n_ranks,
                                                int redundant, const std::filesystem::path& file) {
  if (!file.empty()) return read_placement_file(file, config, n_ranks, redundant);
  return contiguous_placements(config, n_ranks, redundant);
}

}  // namespace trident
