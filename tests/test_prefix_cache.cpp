// The prefix cache: a radix tree of whole KV pages. Matching, sharing, deduplication, locking and
// least-recently-used eviction, with every page accounted for in the pool.
#include <gtest/gtest.h>

#include <numeric>

#include "cache/kv_page_pool.h"
#include "cache/prefix_cache.h"
#include "core/error.h"

using namespace trident;

namespace {

constexpr int P = PrefixCache::kPageSize;

// n tokens: the pages of different `seed`s differ from their first token on.
std::vector<int32_t> tokens(int n, int seed) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), seed * 100000);
  return t;
}

// Pages for a sequence, as the scheduler gives them: full of tokens.
std::vector<int32_t> filled_pages(KvPagePool& pool, int n) {
  std::vector<int32_t> pages;
  EXPECT_TRUE(pool.allocate(n, pages));
  for (int32_t p : pages) pool.set_filled(p, P);
  return pages;
}

}  // namespace

TEST(PrefixCache, MatchesTheLongestCachedPrefixInWholePages) {
  KvPagePool pool(16);
  PrefixCache cache(pool);
  std::vector<int32_t> seq = tokens(3 * P + 10, 1);
  std::vector<int32_t> pages = filled_pages(pool, 4);
  PrefixCache::Node* node = cache.insert(seq, 3, pages, nullptr);
  ASSERT_NE(node, nullptr);
  EXPECT_EQ(cache.cached_pages(), 3);
  pool.release(pages[3]);  // the partial page stays with its sequence
  cache.unlock(node);

  // Same first 2 pages, then different tokens.
  std::vector<int32_t> other = seq;
  other[2 * P + 5] = -1;
  PrefixCache::Match m = cache.match(other);
  EXPECT_EQ(m.tokens(), 2 * P);
  EXPECT_EQ(m.pages, std::vector<int32_t>(pages.begin(), pages.begin() + 2));
  cache.unlock(m.node);

  // Fewer tokens than a page match nothing.
  EXPECT_EQ(cache.match(std::span<const int32_t>(seq.data(), P - 1)).node, nullptr);
  // Different first page: nothing.
  EXPECT_EQ(cache.match(tokens(2 * P, 2)).tokens(), 0);
}

TEST(PrefixCache, ADuplicatePageGoesBackToThePoolAndTheCachedOneIsUsed) {
  KvPagePool pool(16);
  PrefixCache cache(pool);
  std::vector<int32_t> seq = tokens(2 * P, 1);
  std::vector<int32_t> a = filled_pages(pool, 2), b = filled_pages(pool, 2);
  PrefixCache::Node* na = cache.insert(seq, 2, a, nullptr);
  EXPECT_EQ(pool.used_pages(), 4);
  // b computed the same tokens on its own: its pages are duplicates.
  PrefixCache::Node* nb = cache.insert(seq, 2, b, nullptr);
  EXPECT_EQ(na, nb);
  EXPECT_EQ(b, a);
  EXPECT_EQ(pool.used_pages(), 2);
  EXPECT_EQ(cache.cached_pages(), 2);
  EXPECT_EQ(cache.evictable_pages(), 0);
  cache.unlock(na);
  EXPECT_EQ(cache.evictable_pages(), 0) << "b still uses the pages";
  cache.unlock(nb);
  EXPECT_EQ(cache.evictable_pages(), 2);
}

TEST(PrefixCache, LockedPagesAreNeverEvicted) {
  KvPagePool pool(8);
  PrefixCache cache(pool);
  std::vector<int32_t> seq = tokens(3 * P, 1);
  std::vector<int32_t> pages = filled_pages(pool, 3);
  PrefixCache::Node* node = cache.insert(seq, 3, pages, nullptr);
  EXPECT_EQ(cache.evict(10), 0);
  EXPECT_EQ(pool.used_pages(), 3);
  cache.unlock(node);
  EXPECT_EQ(cache.evict(10), 3);
  EXPECT_EQ(pool.used_pages(), 0);
  EXPECT_EQ(cache.cached_pages(), 0);
  EXPECT_EQ(cache.match(seq).node, nullptr);
}

TEST(PrefixCache, EvictsTheLeastRecentlyUsedLeavesFirst) {
  KvPagePool pool(16);
  PrefixCache cache(pool);
  // Two sequences share a first page and branch: root -> s -> {a, b}; c stands alone.
  std::vector<int32_t> sa = tokens(2 * P, 1), sb = sa, sc = tokens(P, 3);
  for (int i = P; i < 2 * P; ++i) sb[i] = -i;
  std::vector<int32_t> pa = filled_pages(pool, 2), pb = filled_pages(pool, 2),
                       pc = filled_pages(pool, 1);
  cache.unlock(cache.insert(sa, 2, pa, nullptr));
  cache.unlock(cache.insert(sb, 2, pb, nullptr));  // its first page is a's: one duplicate freed
  cache.unlock(cache.insert(sc, 1, pc, nullptr));
  EXPECT_EQ(cache.cached_pages(), 4);
  // Use a again: b's branch and c are older.
  cache.unlock(cache.match(sa).node);

  EXPECT_EQ(cache.evict(1), 1);             // b's leaf (older than c)
  PrefixCache::Match mb = cache.match(sb);  // touches the shared page only
  EXPECT_EQ(mb.tokens(), P);
  cache.unlock(mb.node);
  PrefixCache::Match ma = cache.match(sa);
  EXPECT_EQ(ma.tokens(), 2 * P);
  cache.unlock(ma.node);
  EXPECT_EQ(cache.evict(1), 1);  // c, now the oldest leaf
  EXPECT_EQ(cache.match(sc).tokens(), 0);
  EXPECT_EQ(cache.evict(5), 2);  // a's leaf, then the shared page once it is a leaf
  EXPECT_EQ(cache.cached_pages(), 0);
  EXPECT_EQ(cache.evicted_pages(), 4);
  EXPECT_EQ(pool.used_pages(), 0);
}

TEST(PrefixCache, InsertingALongerPathMovesTheLock) {
  KvPagePool pool(8);
  PrefixCache cache(pool);
  std::vector<int32_t> seq = tokens(3 * P, 1);
  std::vector<int32_t> pages = filled_pages(pool, 3);
  PrefixCache::Node* first = cache.insert(seq, 1, pages, nullptr);
  PrefixCache::Node* all = cache.insert(seq, 3, pages, first);
  EXPECT_NE(first, all);
  EXPECT_EQ(cache.evictable_pages(), 0);
  cache.unlock(all);
  EXPECT_EQ(cache.evictable_pages(), 3);
  EXPECT_THROW(cache.unlock(all), Error);
}

TEST(PrefixCache, CachedPagesCountAsFullAndGoBackWhenTheCacheDoes) {
  KvPagePool pool(8);
  {
    PrefixCache cache(pool);
    std::vector<int32_t> seq = tokens(2 * P, 1), pages;
    ASSERT_TRUE(pool.allocate(2, pages));
    pool.set_filled(pages[0], 10);
    cache.unlock(cache.insert(seq, 2, pages, nullptr));
    EXPECT_EQ(pool.filled_slots(), 2 * P);
    EXPECT_EQ(pool.fragmentation(), 0.0);
  }
  EXPECT_EQ(pool.used_pages(), 0);
  EXPECT_EQ(pool.filled_slots(), 0);
}

TEST(KvPagePoolAccounting, FragmentationIsUnusedOverAllocatedSlots) {
  KvPagePool pool(10);
  std::vector<int32_t> pages;
  EXPECT_EQ(pool.fragmentation(), 0.0);
  ASSERT_TRUE(pool.allocate(4, pages));
  for (int i = 0; i < 3; ++i) pool.set_filled(pages[i], P);
  pool.set_filled(pages[3], P / 4);
  EXPECT_DOUBLE_EQ(pool.fragmentation(), double(P - P / 4) / (4 * P));
  EXPECT_DOUBLE_EQ(pool.utilization(), 0.4);
  pool.release(pages[3]);
  EXPECT_EQ(pool.fragmentation(), 0.0);
  EXPECT_THROW(pool.set_filled(pages[3], 1), Error);
  EXPECT_THROW(pool.set_filled(pages[0], P + 1), Error);
}
