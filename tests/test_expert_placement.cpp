// Expert placement: which rank holds which routed experts, with optional redundant copies.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "core/error.h"
#include "parallel/expert_placement.h"

using namespace trident;

namespace {

// Every expert's copies, counted over all ranks.
std::map<int, int> copies(const ExpertPlacement& p) {
  std::map<int, int> n;
  for (int r = 0; r < p.n_ranks(); ++r)
    for (int e : p.experts_of(r)) n[e]++;
  return n;
}

}  // namespace

TEST(ExpertPlacement, ContiguousSplitPutsEveryExpertOnExactlyOneRank) {
  ExpertPlacement p = ExpertPlacement::contiguous(16, 4);
  EXPECT_EQ(p.experts_of(0), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(p.experts_of(3), (std::vector<int>{12, 13, 14, 15}));
  for (auto [e, n] : copies(p)) EXPECT_EQ(n, 1) << "expert " << e;
  EXPECT_TRUE(p.holds(2, 9));
  EXPECT_FALSE(p.holds(1, 9));
  EXPECT_EQ(p.ranks_of(9), (std::vector<int>{2}));
}

TEST(ExpertPlacement, UnevenSplitGivesTheFirstRanksOneMore) {
  ExpertPlacement p = ExpertPlacement::contiguous(10, 4);
  EXPECT_EQ(p.experts_of(0).size(), 3u);
  EXPECT_EQ(p.experts_of(1).size(), 3u);
  EXPECT_EQ(p.experts_of(2).size(), 2u);
  EXPECT_EQ(p.experts_of(3), (std::vector<int>{8, 9}));
  EXPECT_EQ(copies(p).size(), 10u);
}

TEST(ExpertPlacement, RedundantSlotsHoldCopiesOfOtherRanksExperts) {
  ExpertPlacement p = ExpertPlacement::contiguous(8, 2, 2);
  EXPECT_EQ(p.experts_of(0), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(p.experts_of(1), (std::vector<int>{4, 5, 6, 7, 0}));
  EXPECT_EQ(p.ranks_of(4), (std::vector<int>{0, 1}));
  EXPECT_EQ(p.ranks_of(0), (std::vector<int>{0, 1}));
  EXPECT_EQ(p.ranks_of(5), (std::vector<int>{1}));
}

TEST(ExpertPlacement, ATokenUsesItsOwnRanksCopyWhenThereIsOne) {
  ExpertPlacement p = ExpertPlacement::contiguous(8, 2, 2);
  for (int64_t t = 0; t < 5; ++t) {
    EXPECT_EQ(p.rank_for(4, 0, t), 0);
    EXPECT_EQ(p.rank_for(4, 1, t), 1);
    EXPECT_EQ(p.rank_for(6, 0, t), 1);
  }
}

TEST(ExpertPlacement, CopiesElsewhereTakeTurnsByToken) {
  // Expert 0 lives on ranks 1 and 2; rank 0's tokens alternate between them.
  ExpertPlacement p = ExpertPlacement::from_ranks(2, {{1}, {0, 1}, {0}});
  std::map<int, int> used;
  for (int64_t t = 0; t < 10; ++t) used[p.rank_for(0, 0, t)]++;
  EXPECT_EQ(used[1], 5);
  EXPECT_EQ(used[2], 5);
}

TEST(ExpertPlacement, RefusesAnExpertOnNoRankOrTwiceOnOne) {
  EXPECT_THROW(ExpertPlacement::from_ranks(3, {{0}, {1}}), Error);
  EXPECT_THROW(ExpertPlacement::from_ranks(2, {{0, 0, 1}}), Error);
  EXPECT_THROW(ExpertPlacement::from_ranks(2, {{0, 2}, {1}}), Error);
}

TEST(ExpertPlacement, RefusesSizesThatDoNotFit) {
  EXPECT_THROW(ExpertPlacement::contiguous(4, 8), Error);      // more ranks than experts
  EXPECT_THROW(ExpertPlacement::contiguous(8, 2, 3), Error);   // copies not a multiple of ranks
  EXPECT_THROW(ExpertPlacement::contiguous(8, 2, 10), Error);  // more copies than foreign experts
  try {
    ExpertPlacement::contiguous(8, 2, 3);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 redundant experts"), std::string::npos) << e.what();
  }
}

TEST(ExpertPlacement, PhysicalMapListsEveryCopysSlotInRankOrder) {
  ExpertPlacement p = ExpertPlacement::contiguous(8, 2, 2);  // rank 0: 0-4, rank 1: 4-7 and 0
  PhysicalExpertMap m = p.physical_map();
  EXPECT_EQ(m.slots_per_rank, 5);
  EXPECT_EQ(m.max_copies, 2);
  EXPECT_EQ(m.copies[4], 2);
  EXPECT_EQ(m.physical[4 * 2 + 0], 4);      // rank 0, slot 4
  EXPECT_EQ(m.physical[4 * 2 + 1], 5 + 0);  // rank 1, slot 0
  EXPECT_EQ(m.physical[0 * 2 + 1], 5 + 4);  // expert 0's copy: rank 1, slot 4
  EXPECT_EQ(m.copies[6], 1);
  EXPECT_EQ(m.physical[6 * 2 + 1], -1);
  for (int e = 0; e < 8; ++e) {
    std::vector<int> ranks;
    for (int c = 0; c < m.copies[e]; ++c) {
      const int phys = m.physical[e * m.max_copies + c];
      ranks.push_back(phys / m.slots_per_rank);
      EXPECT_EQ(p.experts_of(ranks.back())[phys % m.slots_per_rank], e) << "expert " << e;
    }
    EXPECT_EQ(ranks, p.ranks_of(e)) << "expert " << e;
  }
}
