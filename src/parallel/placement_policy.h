// Where each routed expert should live, from how busy the experts were: the placement policies of
// DeepSeek's expert-parallel load balancer (EPLB), written from its description.
//
// - Global: give the redundant slots, one at a time, to the expert with the most load per copy;
//   then pack the copies (each carrying its expert's load over its copy count) onto the ranks,
//   heaviest first, each into the lightest rank with a free slot, so every rank ends with the same
//   number of slots and as even a load as the greedy order finds.
// - Hierarchical (several nodes, and the gate's expert groups divide evenly over them): first pack
//   whole expert groups onto nodes the same way, so a token's group-limited choices stay within
//   few nodes; then replicate and pack within each node, copies on that node's ranks only.
//
// Two additions of ours: two copies of one expert never share a rank (it would gain nothing), and
// after the greedy packing, swaps between the busiest rank and another that lower the busiest
// one's load are made while there are any. A layer then keeps whichever of the policy's placement
// and the contiguous one (ExpertPlacement::contiguous) has the less loaded busiest rank, so a
// plan is never worse than the default on the load it was planned from.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "parallel/expert_load.h"
#include "parallel/expert_placement.h"

namespace trident {

struct PlacementShape {
  int n_ranks = 1;
  int redundant = 0;  // expert copies beyond one each, in all: a multiple of n_ranks
  int n_groups = 1;   // the gate's expert groups (config n_group)
  int n_nodes = 1;    // hosts; ranks [k * n_ranks / n_nodes, (k + 1) * n_ranks / n_nodes) on node k
};

enum class PlacementPolicy : uint8_t { Hierarchical, Global, Contiguous };
std::string_view policy_name(PlacementPolicy policy);

// One layer's plan, in DeepSeek's terms: physical expert p (a slot) is slot p % slots_per_rank of
// rank p / slots_per_rank.
struct LayerPlacementPlan {
  int layer = 0;
  PlacementPolicy policy = PlacementPolicy::Global;
  ExpertPlacement placement;
  int slots_per_rank = 0;
  std::vector<int> physical_to_logical;               // [n_ranks * slots_per_rank]
  std::vector<std::vector<int>> logical_to_physical;  // [n_experts]: its slots, ascending
  std::vector<int> logical_count;                     // [n_experts]: its copies
  std::vector<double> rank_load;             // [n_ranks]: expected load on the plan's input
  std::vector<double> contiguous_rank_load;  // the same under the contiguous placement
};

// The policy for one layer's loads (hierarchical when shape.n_nodes > 1 divides n_groups,
// global otherwise), or the contiguous placement where that is less loaded.
LayerPlacementPlan plan_layer(const std::vector<double>& load, const PlacementShape& shape);
// Every MoE layer of `load`, in order.
std::vector<LayerPlacementPlan> plan_placements(const ExpertLoad& load,
                                                const PlacementShape& shape);

// The plan of a placement already made (to write it, or to weigh it against another).
LayerPlacementPlan describe_placement(const ExpertPlacement& placement,
                                      const std::vector<double>& load, PlacementPolicy policy);

// `plan` with its ranks renumbered within each node so that as many experts as a greedy matching
// finds stay on the rank `current` has them on: which rank holds which set of experts does not
// change how even the load is, but every expert a rank keeps is one it need not load.
ExpertPlacement keep_in_place(const ExpertPlacement& plan, const ExpertPlacement& current,
                              int n_nodes);

// Each rank's expected load: the load of each expert it holds, split evenly over its copies.
std::vector<double> expected_rank_loads(const ExpertPlacement& placement,
                                        const std::vector<double>& load);

// The building blocks, for tests.
//
// The pack of each item: n_packs packs of items / n_packs items each. Items go heaviest first
// (ties: lower index first) into the lightest pack with room (ties: lower pack), never into a
// pack holding an item of the same label (`labels` empty: all differ); then improving swaps
// between the heaviest pack and the others, as above.
std::vector<int> balanced_packing(const std::vector<double>& weights, int n_packs,
                                  const std::vector<int>& labels = {});
// Copies of each expert when n_physical copies in all are handed out one at a time to the
// expert with the highest load per copy (ties: lower expert), at most max_copies each.
std::vector<int> replicate_experts(const std::vector<double>& load, int n_physical, int max_copies);

}  // namespace trident
