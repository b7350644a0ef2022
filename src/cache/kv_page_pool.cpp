#include "cache/kv_page_pool.h"

#include "core/error.h"

namespace trident {

KvPagePool::KvPagePool(int n_pages) : in_use_(n_pages, false) {
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

void KvPagePool::release(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) {
    TRI_CHECK(p >= 0 && p < total_pages() && in_use_[p],
              "KV page pool: page {} released but not in use", p);
    in_use_[p] = false;
    free_.push_back(p);
  }
}

}  // namespace trident
