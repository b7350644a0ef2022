// Where the routed experts of one MoE layer live: each logical expert (the gate's expert id) has
// one or more physical copies, each on a different rank. Redundant copies of busy experts spread
// their tokens over several ranks, as DeepSeek's expert-parallel load balancer does
// (placement_policy.h plans them from the experts' load).
#pragma once

#include <cstdint>
#include <vector>

namespace trident {

// Where the copies of each logical expert live, as the GPU kernels read it: physical slot
// p = rank * slots_per_rank + (index in experts_of(rank)), so the rank is p / slots_per_rank.
struct PhysicalExpertMap {
  int slots_per_rank = 0;  // the most experts any rank holds
  int max_copies = 0;      // the most copies any expert has
  std::vector<int32_t> physical;  // [n_experts, max_copies]: copies in rank order, -1 padding
  std::vector<int32_t> copies;    // [n_experts]
};

class ExpertPlacement {
 public:
  // Rank r holds a contiguous block of experts (the first E % R ranks one more), plus
  // `redundant` / R copies of the experts that follow its block, from the next ranks' blocks.
  // `redundant` must be a multiple of the rank count so every rank has as many slots.
  static ExpertPlacement contiguous(int n_experts, int n_ranks, int redundant = 0);

  // Placements planned from the experts' load: placement_policy.h.

  // From the experts each rank holds; every expert must be somewhere, at most once per rank.
  static ExpertPlacement from_ranks(int n_experts, std::vector<std::vector<int>> experts_of_rank);

  int n_experts() const { return int(ranks_of_expert_.size()); }
  int n_ranks() const { return int(experts_of_rank_.size()); }
  // Logical experts on `rank`, in slot order.
  const std::vector<int>& experts_of(int rank) const { return experts_of_rank_.at(rank); }
  // Ranks holding a copy of `expert`, ascending.
  const std::vector<int>& ranks_of(int expert) const { return ranks_of_expert_.at(expert); }
  bool holds(int rank, int expert) const;

  // The rank that computes `expert` for token `token` of `source_rank`: the source itself when it
  // holds a copy (no traffic), otherwise the copies take turns by token.
  int rank_for(int expert, int source_rank, int64_t token) const;

  // The logical-to-physical map; rank_for over it picks the same ranks.
  PhysicalExpertMap physical_map() const;

 private:
  std::vector<std::vector<int>> experts_of_rank_;
  std::vector<std::vector<int>> ranks_of_expert_;
};

}  // namespace trident
