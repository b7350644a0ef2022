#include "core/region_allocator.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace trident {
namespace {

constexpr uint64_t kBase = 1 << 20;

TEST(RegionAllocator, HandsOutAlignedRangesInOrderUntilFull) {
  RegionAllocator r(kBase, 1024);
  EXPECT_EQ(r.allocate(1), kBase);
  EXPECT_EQ(r.allocate(256), kBase + 256);
  EXPECT_EQ(r.allocate(300), kBase + 512);  // rounded up to 512 bytes
  EXPECT_EQ(r.in_use(), 1024u);
  EXPECT_EQ(r.allocate(1), 0u);
  EXPECT_EQ(r.allocate(0), 0u);
}

TEST(RegionAllocator, ReusesFreedRangesFirstFitAndMergesNeighbours) {
  RegionAllocator r(kBase, 4096);
  const uint64_t a = r.allocate(1024), b = r.allocate(1024), c = r.allocate(1024);
  ASSERT_TRUE(r.release(a));
  ASSERT_TRUE(r.release(c));
  EXPECT_EQ(r.largest_free(), 2048u);  // c merged with the untouched tail
  EXPECT_EQ(r.allocate(512), a);       // first fit: the lowest hole
  ASSERT_TRUE(r.release(a));
  ASSERT_TRUE(r.release(b));
  EXPECT_EQ(r.largest_free(), 4096u);  // a, b and the tail merged back into one range
  EXPECT_EQ(r.in_use(), 0u);
  EXPECT_EQ(r.high_water(), 3072u);
}

TEST(RegionAllocator, RefusesAddressesItDidNotHandOut) {
  RegionAllocator r(kBase, 4096);
  const uint64_t a = r.allocate(512);
  EXPECT_FALSE(r.release(a + 256));
  EXPECT_FALSE(r.release(kBase + 8192));
  EXPECT_TRUE(r.contains(a));
  EXPECT_FALSE(r.contains(kBase + 4096));
  EXPECT_TRUE(r.release(a));
  EXPECT_FALSE(r.release(a));  // twice
}

TEST(RegionAllocator, LiveRangesNeverOverlapUnderRandomTraffic) {
  RegionAllocator r(kBase, 1 << 16);
  std::mt19937 rng(7);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int i = 0; i < 5000; ++i) {
    if (!live.empty() && rng() % 2) {
      const size_t k = rng() % live.size();
      ASSERT_TRUE(r.release(live[k].first));
      live.erase(live.begin() + k);
      continue;
    }
    const uint64_t bytes = 1 + rng() % 3000, at = r.allocate(bytes);
    if (at == 0) continue;
    ASSERT_EQ(at % RegionAllocator::kAlignment, 0u);
    ASSERT_LE(at + bytes, kBase + (1 << 16));
    for (const auto& [start, length] : live) ASSERT_TRUE(at + bytes <= start || start + length <= at);
    live.emplace_back(at, bytes);
  }
  for (const auto& l : live) ASSERT_TRUE(r.release(l.first));
  EXPECT_EQ(r.largest_free(), uint64_t(1) << 16);
}

}  // namespace
}  // namespace trident
