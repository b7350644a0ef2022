#include "core/region_allocator.h"

#include <algorithm>
#include <iterator>

namespace trident {

RegionAllocator::RegionAllocator(uint64_t base, uint64_t bytes) : base_(base), size_(bytes) {
  if (bytes > 0) free_.emplace(base, bytes);
}

uint64_t RegionAllocator::allocate(uint64_t bytes) {
  if (bytes == 0) return 0;
  const uint64_t want = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    // Free ranges start on the alignment: the base is aligned by the caller and every length
    // handed out is a multiple of it.
    if (it->second < want) continue;
    const uint64_t address = it->first, left = it->second - want;
    free_.erase(it);
    if (left > 0) free_.emplace(address + want, left);
    live_.emplace(address, want);
    in_use_ += want;
    high_water_ = std::max(high_water_, address + want - base_);
    return address;
  }
  return 0;
}

bool RegionAllocator::release(uint64_t address) {
  auto live = live_.find(address);
  if (live == live_.end()) return false;
  uint64_t start = address, length = live->second;
  in_use_ -= length;
  live_.erase(live);
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + length) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      length += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, length);
  return true;
}

uint64_t RegionAllocator::largest_free() const {
  uint64_t best = 0;
  for (const auto& [start, length] : free_) best = std::max(best, length);
  return best;
}

}  // namespace trident
