// The expert placement policies (DeepSeek's EPLB, parallel/placement_policy.h): small cases
// worked out by hand, then properties on skewed random loads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"
#include "parallel/placement_policy.h"

using namespace trident;

namespace {

double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

// Zipf-like loads: expert ranks shuffled, load ~ 1 / rank^s, in tokens.
std::vector<double> zipf_load(int n_experts, double s, std::mt19937& rng) {
  std::vector<int> rank(n_experts);
  for (int i = 0; i < n_experts; ++i) rank[i] = i + 1;
  std::shuffle(rank.begin(), rank.end(), rng);
  std::vector<double> load(n_experts);
  for (int e = 0; e < n_experts; ++e) load[e] = std::round(100000.0 / std::pow(rank[e], s));
  return load;
}

}  // namespace

TEST(BalancedPacking, PutsTheHeaviestFirstIntoTheLightestPackWithRoom) {
  // 5 -> A, 4 -> B, 3 -> B (7), 3 -> A (8), 2 -> B (9, full), 1 -> A (9).
  EXPECT_EQ(balanced_packing({5, 4, 3, 3, 2, 1}, 2), (std::vector<int>{0, 1, 1, 0, 1, 0}));
}

TEST(BalancedPacking, NeverPutsTwoItemsOfOneLabelInOnePack) {
  // Without labels the two 6s would share pack 0 (6 + 1 beside 6 + 1 is the same load).
  const std::vector<int> pack = balanced_packing({6, 6, 1, 1}, 2, {7, 7, 8, 9});
  EXPECT_NE(pack[0], pack[1]);
  // 10 -> A, then 1, 1, 1 fill B, 0.5 -> A, and the last 0.5 finds room only in A, which holds
  // its label: an item of B (the first 1) moves to A to make room in B.
  const std::vector<int> tight = balanced_packing({10, 1, 1, 1, 0.5, 0.5}, 2, {0, 1, 2, 3, 4, 4});
  EXPECT_EQ(tight, (std::vector<int>{0, 0, 1, 1, 0, 1}));
}

TEST(BalancedPacking, SwapsLowerTheHeaviestPackBelowWhatTheGreedyOrderLeaves) {
  // Greedy: 12 -> A, 11 -> B, 8 -> B (19), 6 -> A (18), 3 -> A (21, full), 0 -> B (19).
  // Swapping A's 12 for B's 11 gives 20 and 20.
  EXPECT_EQ(balanced_packing({6, 11, 0, 8, 3, 12}, 2), (std::vector<int>{0, 0, 1, 1, 0, 1}));
}

TEST(ReplicateExperts, GivesEachExtraCopyToTheMostLoadPerCopy) {
  // 100 -> 2 copies (50 each); then 100 is capped at 2, and expert 1 wins the tie among 10s.
  EXPECT_EQ(replicate_experts({100, 10, 10, 10}, 6, 2), (std::vector<int>{2, 2, 1, 1}));
  // Uncapped: 100 / 3 = 33 still beats 10.
  EXPECT_EQ(replicate_experts({100, 10, 10, 10}, 6, 4), (std::vector<int>{3, 1, 1, 1}));
  EXPECT_THROW(replicate_experts({1, 1}, 5, 2), Error);
}

TEST(PlanLayer, GlobalPolicyCopiesTheHotExpertAndEvensTwoRanksExactly) {
  // Expert 7 takes 100 of 170 tokens. Copies: 7 twice (50 each), then expert 0 (the first of the
  // 10s) twice (5 each). Packing 50, 50, 10 x 6, 5, 5 onto 2 ranks of 5 slots: 85 and 85.
  const std::vector<double> load = {10, 10, 10, 10, 10, 10, 10, 100};
  const LayerPlacementPlan plan = plan_layer(load, {2, 2, 1, 1});
  EXPECT_EQ(plan.policy, PlacementPolicy::Global);
  EXPECT_EQ(plan.placement.experts_of(0), (std::vector<int>{0, 1, 3, 5, 7}));
  EXPECT_EQ(plan.placement.experts_of(1), (std::vector<int>{0, 2, 4, 6, 7}));
  EXPECT_EQ(plan.rank_load, (std::vector<double>{85, 85}));
  // Contiguous blocks with their copies of the next block's first expert: 40 and 130.
  EXPECT_EQ(plan.contiguous_rank_load, (std::vector<double>{40, 130}));
  EXPECT_EQ(plan.slots_per_rank, 5);
  EXPECT_EQ(plan.physical_to_logical, (std::vector<int>{0, 1, 3, 5, 7, 0, 2, 4, 6, 7}));
  EXPECT_EQ(plan.logical_count, (std::vector<int>{2, 1, 1, 1, 1, 1, 1, 2}));
  EXPECT_EQ(plan.logical_to_physical[7], (std::vector<int>{4, 9}));
  EXPECT_EQ(plan.logical_to_physical[2], (std::vector<int>{6}));
}

TEST(PlanLayer, HierarchicalPolicyPacksGroupsOntoNodesFirst) {
  // 4 groups of 2 experts: loads 16, 2, 8, 6. Nodes (2 groups each): group 0 -> node 0,
  // group 2 -> node 1, group 3 -> node 1 (14), group 1 -> node 0 (18). Within node 0 (experts
  // 8, 8, 1, 1 on ranks 0 and 1): {0, 2} and {1, 3}; within node 1 (4, 4, 3, 3): {4, 6}, {5, 7}.
  const std::vector<double> load = {8, 8, 1, 1, 4, 4, 3, 3};
  const LayerPlacementPlan plan = plan_layer(load, {4, 0, 4, 2});
  EXPECT_EQ(plan.policy, PlacementPolicy::Hierarchical);
  EXPECT_EQ(plan.placement.experts_of(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(plan.placement.experts_of(1), (std::vector<int>{1, 3}));
  EXPECT_EQ(plan.placement.experts_of(2), (std::vector<int>{4, 6}));
  EXPECT_EQ(plan.placement.experts_of(3), (std::vector<int>{5, 7}));
  EXPECT_EQ(plan.rank_load, (std::vector<double>{9, 9, 7, 7}));
  EXPECT_EQ(max_of(plan.contiguous_rank_load), 16);
}

TEST(PlanLayer, GroupsThatDoNotDivideOverTheNodesTakeTheGlobalPolicy) {
  const std::vector<double> load = {8, 8, 1, 1, 4, 4, 3, 3};
  EXPECT_EQ(plan_layer(load, {4, 0, 3, 2}).policy, PlacementPolicy::Global);  // 8 % 3 != 0
  EXPECT_EQ(plan_layer(load, {4, 0, 1, 2}).policy, PlacementPolicy::Global);  // 1 group, 2 nodes
  EXPECT_EQ(plan_layer(load, {4, 0, 4, 1}).policy, PlacementPolicy::Global);  // one node
}

TEST(PlanLayer, KeepsTheContiguousPlacementWhenThePolicyIsWorse) {
  // Greedy packing and swaps reach 15, 14, 12 here; contiguous blocks happen to give 13, 14, 14.
  const std::vector<double> load = {3, 6, 4, 0, 8, 6, 3, 9, 2};
  const LayerPlacementPlan plan = plan_layer(load, {3, 0, 1, 1});
  EXPECT_EQ(plan.policy, PlacementPolicy::Contiguous);
  EXPECT_EQ(plan.placement.experts_of(1), (std::vector<int>{3, 4, 5}));
  EXPECT_EQ(plan.rank_load, (std::vector<double>{13, 14, 14}));
  // Even loads: the policy's placement is as even as the contiguous one, and is the plan.
  EXPECT_EQ(plan_layer(std::vector<double>(8, 5.0), {4, 0, 1, 1}).policy, PlacementPolicy::Global);
}

TEST(PlanLayer, RefusesShapesThatCannotGiveEveryRankAsManySlots) {
  const std::vector<double> load(16, 1.0);
  EXPECT_THROW(plan_layer(load, {3, 0, 1, 1}), Error);   // 16 experts over 3 ranks
  EXPECT_THROW(plan_layer(load, {4, 2, 1, 1}), Error);   // 2 copies over 4 ranks
  EXPECT_THROW(plan_layer(load, {4, 0, 1, 3}), Error);   // 4 ranks over 3 nodes
  EXPECT_THROW(plan_layer(load, {4, 64, 1, 1}), Error);  // 20 slots per rank, 16 experts
  try {
    plan_layer(load, {4, 2, 1, 1});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 redundant copies"), std::string::npos) << e.what();
  }
}

TEST(KeepInPlace, RenumbersRanksSoExpertsStayWhereTheyAre) {
  const ExpertPlacement current = ExpertPlacement::from_ranks(8, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  const ExpertPlacement plan = ExpertPlacement::from_ranks(8, {{4, 6}, {0, 2}, {5, 7}, {1, 3}});
  const ExpertPlacement kept = keep_in_place(plan, current, 1);
  // The same sets, on the ranks holding most of each already.
  EXPECT_EQ(kept.experts_of(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(kept.experts_of(1), (std::vector<int>{1, 3}));
  EXPECT_EQ(kept.experts_of(2), (std::vector<int>{4, 6}));
  EXPECT_EQ(kept.experts_of(3), (std::vector<int>{5, 7}));
  // Across nodes nothing moves: with 2 nodes, plan rank 0 ({4, 6}) stays on node 0.
  const ExpertPlacement by_node = keep_in_place(plan, current, 2);
  std::set<std::vector<int>> node0 = {by_node.experts_of(0), by_node.experts_of(1)};
  EXPECT_EQ(node0, (std::set<std::vector<int>>{{4, 6}, {0, 2}}));
}

// Properties over skewed random loads, several shapes: every expert placed and no rank holds one
// twice (ExpertPlacement checks), every rank as many slots, the busiest rank no worse than under
// contiguous blocks and close to the mean, hierarchical copies within their group's node, and
// the same plan from the same load.
TEST(PlanLayer, SkewedLoadsGetEvenRanksOnEveryShape) {
  struct Shape {
    int experts;
    PlacementShape shape;
    double max_over_mean;  // bound on the busiest rank over the mean
  };
  // One node: with redundant copies the global policy evens the ranks to within 1%; without,
  // the hottest expert alone can exceed the mean. Several nodes: whole groups go to a node, so
  // a node with a hot group carries more than its share (the price of less traffic between
  // nodes), the more so the more nodes.
  const Shape shapes[] = {
      {16, {4, 0, 4, 1}, 1.45},    {16, {4, 4, 4, 1}, 1.01},   {64, {8, 8, 8, 1}, 1.01},
      {64, {8, 8, 8, 2}, 1.25},    {256, {8, 32, 8, 1}, 1.01}, {256, {32, 32, 8, 4}, 1.95},
      {256, {16, 16, 8, 2}, 1.15},
  };
  std::mt19937 rng(2024);
  int policy_wins = 0, cases = 0;
  for (const Shape& s : shapes) {
    for (int trial = 0; trial < 20; ++trial) {
      SCOPED_TRACE(testing::Message() << s.experts << " experts, " << s.shape.n_ranks << " ranks, "
                                      << s.shape.redundant << " redundant, " << s.shape.n_nodes
                                      << " nodes, trial " << trial);
      const std::vector<double> load = zipf_load(s.experts, 1.0, rng);
      const LayerPlacementPlan plan = plan_layer(load, s.shape);
      const ExpertPlacement& p = plan.placement;
      const int slots = (s.experts + s.shape.redundant) / s.shape.n_ranks;
      for (int r = 0; r < s.shape.n_ranks; ++r) EXPECT_EQ(int(p.experts_of(r).size()), slots);
      int copies = 0;
      for (int e = 0; e < s.experts; ++e) {
        EXPECT_GE(p.ranks_of(e).size(), 1u);
        copies += int(p.ranks_of(e).size());
      }
      EXPECT_EQ(copies, s.experts + s.shape.redundant);
      const double mean = std::accumulate(load.begin(), load.end(), 0.0) / s.shape.n_ranks;
      EXPECT_LE(max_of(plan.rank_load), max_of(plan.contiguous_rank_load));
      EXPECT_LE(max_of(plan.rank_load), s.max_over_mean * mean);
      if (plan.policy == PlacementPolicy::Hierarchical) {
        const int per_group = s.experts / s.shape.n_groups;
        const int per_node = s.shape.n_ranks / s.shape.n_nodes;
        for (int g = 0; g < s.shape.n_groups; ++g) {
          std::set<int> nodes;
          for (int e = g * per_group; e < (g + 1) * per_group; ++e)
            for (int r : p.ranks_of(e)) nodes.insert(r / per_node);
          EXPECT_EQ(nodes.size(), 1u) << "group " << g;
        }
      }
      const LayerPlacementPlan again = plan_layer(load, s.shape);
      EXPECT_EQ(again.physical_to_logical, plan.physical_to_logical);
      policy_wins += plan.policy != PlacementPolicy::Contiguous ? 1 : 0;
      ++cases;
    }
  }
  // The policy itself, not the contiguous fallback, makes nearly every one of these placements.
  EXPECT_GE(policy_wins, cases * 95 / 100);
}
