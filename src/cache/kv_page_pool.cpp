#include "cache/kv_page_pool.h"

#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"

namespace trident {

static_assert(KvPagePool::kPageSize == AttentionMeta::kPageSize);

KvPagePool::KvPagePool(int n_pages)
    : in_use_(std::max(n_pages, 0), false), filled_(in_use_.size(), 0) {
  TRI_CHECK(n_pages > 0, "KV page pool needs at least one page, got {}", n_pages);
  free_.reserve(n_pages);
  for (int i = n_pages - 1; i >= 0; --i) free_.push_back(i);
}

bool KvPagePool::allocate(int n, std::vector<int32_t>& out) {
  if (n > free_pages()) return false;
  for (int i = 0; i < n; ++i) {
    int32_t p = free_.back();
    free_.pop_back();
    in_use_[p] = true;
    out.push_back(p);
  }
  return true;
}

void KvPagePool::check_in_use(int32_t page, const char* what) const {
  TRI_CHECK(page >= 0 && page < total_pages() && in_use_[page],
            "KV page pool: page {} {} but not in use", page, what);
}

void KvPagePool::release(int32_t page) {
  check_in_use(page, "released");
  in_use_[page] = false;
  filled_slots_ -= filled_[page];
  filled_[page] = 0;
  free_.push_back(page);
}

void KvPagePool::release(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) release(p);
}

void KvPagePool::set_filled(int32_t page, int slots) {
  check_in_use(page, "filled");
  TRI_CHECK(slots >= 0 && slots <= kPageSize, "KV page {}: {} slots filled, a page holds {}", page,
            slots, kPageSize);
  filled_slots_ += slots - filled_[page];
  filled_[page] = slots;
}

double KvPagePool::fragmentation() const {
  const int64_t slots = int64_t(used_pages()) * kPageSize;
  return slots == 0 ? 0.0 : double(slots - filled_slots_) / double(slots);
}

}  // namespace trident
