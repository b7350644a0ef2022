#include "parallel/expert_placement.h"

#include <algorithm>

#include "core/error.h"

namespace trident {

namespace {

void check_sizes(int n_experts, int n_ranks, int redundant) {
  TRI_CHECK(n_ranks >= 1, "expert placement needs at least one rank, got {}", n_ranks);
  TRI_CHECK(n_experts >= n_ranks,
            "{} routed experts cannot be spread over {} ranks: use at most {} ranks", n_experts,
            n_ranks, n_experts);
  TRI_CHECK(redundant >= 0 && redundant % n_ranks == 0,
            "{} redundant experts do not split evenly over {} ranks: use a multiple of {}",
            redundant, n_ranks, n_ranks);
  TRI_CHECK(n_experts % n_ranks == 0 || redundant == 0,
            "redundant experts need the {} experts to split evenly over {} ranks", n_experts,
            n_ranks);
  TRI_CHECK(redundant / n_ranks <= n_experts - n_experts / n_ranks,
            "{} redundant experts per rank exceed the {} experts each rank does not hold",
            redundant / n_ranks, n_experts - n_experts / n_ranks);
}

}  // namespace

ExpertPlacement ExpertPlacement::contiguous(int n_experts, int n_ranks, int redundant) {
  check_sizes(n_experts, n_ranks, redundant);
  std::vector<std::vector<int>> ranks(n_ranks);
  const int base = n_experts / n_ranks, extra = n_experts % n_ranks;
  int next = 0;
  for (int r = 0; r < n_ranks; ++r) {
    int block = base + (r < extra ? 1 : 0);
    for (int i = 0; i < block; ++i) ranks[r].push_back(next++);
  }
  for (int r = 0; r < n_ranks; ++r) {
    int after = ranks[r].back();
    for (int i = 1; i <= redundant / n_ranks; ++i) ranks[r].push_back((after + i) % n_experts);
  }
  return from_ranks(n_experts, std::move(ranks));
}

ExpertPlacement ExpertPlacement::from_ranks(int n_experts,
                                            std::vector<std::vector<int>> experts_of_rank) {
  ExpertPlacement p;
  p.ranks_of_expert_.assign(n_experts, {});
  for (int r = 0; r < int(experts_of_rank.size()); ++r) {
    for (int e : experts_of_rank[r]) {
      TRI_CHECK(e >= 0 && e < n_experts, "rank {} is given expert {}, outside [0, {})", r, e,
                n_experts);
      auto& holders = p.ranks_of_expert_[e];
      TRI_CHECK(holders.empty() || holders.back() != r, "rank {} is given expert {} twice", r, e);
      holders.push_back(r);
    }
  }
  for (int e = 0; e < n_experts; ++e)
    TRI_CHECK(!p.ranks_of_expert_[e].empty(), "expert {} is placed on no rank", e);
  p.experts_of_rank_ = std::move(experts_of_rank);
  return p;
}

bool ExpertPlacement::holds(int rank, int expert) const {
  const auto& holders = ranks_of_expert_.at(expert);
  return std::binary_search(holders.begin(), holders.end(), rank);
}

int ExpertPlacement::rank_for(int expert, int source_rank, int64_t token) const {
  const auto& holders = ranks_of_expert_.at(expert);
  if (holders.size() == 1) return holders[0];
  if (std::binary_search(holders.begin(), holders.end(), source_rank)) return source_rank;
  return holders[size_t(token + source_rank) % holders.size()];
}

PhysicalExpertMap ExpertPlacement::physical_map() const {
  PhysicalExpertMap m;
  for (const auto& experts : experts_of_rank_)
    m.slots_per_rank = std::max(m.slots_per_rank, int(experts.size()));
  for (const auto& holders : ranks_of_expert_)
    m.max_copies = std::max(m.max_copies, int(holders.size()));
  m.physical.assign(size_t(n_experts()) * m.max_copies, -1);
  m.copies.assign(n_experts(), 0);
  for (int r = 0; r < n_ranks(); ++r) {
    const auto& experts = experts_of_rank_[r];
    for (int slot = 0; slot < int(experts.size()); ++slot) {
      const int e = experts[slot];
      m.physical[size_t(e) * m.max_copies + m.copies[e]++] = r * m.slots_per_rank + slot;
    }
  }
  return m;
}

}  // namespace trident
