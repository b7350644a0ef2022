// The expert placement file: what `trident eplb` writes from an expert load file and
// `--expert-placement FILE` starts a run with.
//
//   {"format": "trident-expert-placement-v1", "n_ranks": 4, "n_experts": 16, "redundant": 4,
//    "slots_per_rank": 5, "n_nodes": 1, "n_groups": 4,
//    "layers": [{"layer": 1, "policy": "global",
//                "physical_to_logical": [<n_ranks * slots_per_rank expert ids>],
//                "logical_to_physical": [[<slots of expert 0>], ...],
//                "logical_count": [<copies of each expert>],
//                "rank_load": [...], "contiguous_rank_load": [...]}, ...]}    (MoE layers)
//
// Slot p is slot p % slots_per_rank of rank p / slots_per_rank. A reader takes
// physical_to_logical and checks that the other maps agree with it; the loads are for people.
#pragma once

#include <filesystem>
#include <vector>

#include "model/config.h"
#include "parallel/expert_placement.h"
#include "parallel/placement_policy.h"

namespace trident {

void write_placement_file(const std::filesystem::path& file, const PlacementShape& shape,
                          int n_experts, const std::vector<LayerPlacementPlan>& layers);

// One placement per layer of `config` for a run of n_ranks ranks (dense layers' entries, unused,
// are contiguous). Every MoE layer must be in the file. `redundant`: the run's
// --ep-redundant-experts, which must be 0 or the file's.
std::vector<ExpertPlacement> read_placement_file(const std::filesystem::path& file,
                                                 const ModelConfig& config, int n_ranks,
                                                 int redundant);

// What a run starts with: the file's placements, or contiguous ones when `file` is empty.
std::vector<ExpertPlacement> initial_placements(const ModelConfig& config, int n_ranks,
                                                int redundant, const std::filesystem::path& file);

}  // namespace trident
