// First-fit allocation inside one fixed region of addresses, with neighbours merged on release.
// The CUDA backend carves the tensors of a CUDA graph's capture from such a region: addresses a
// graph records must stay valid for every replay, so they cannot come from a pool that hands the
// memory to someone else once the tensor is freed. Addresses are plain integers; nothing here
// touches memory. Not thread-safe: the owner locks.
#pragma once

#include <cstdint>
#include <map>

namespace trident {

class RegionAllocator {
 public:
  static constexpr uint64_t kAlignment = 256;

  RegionAllocator() = default;
  RegionAllocator(uint64_t base, uint64_t bytes);

  uint64_t base() const { return base_; }
  uint64_t size() const { return size_; }
  bool contains(uint64_t address) const { return address >= base_ && address < base_ + size_; }

  // The lowest free address with `bytes` (rounded up to kAlignment) free after it; 0 when no
  // free range is large enough or bytes is 0.
  uint64_t allocate(uint64_t bytes);
  // Gives back what allocate returned at `address`; false when the address is not a live
  // allocation of this region.
  bool release(uint64_t address);

  uint64_t in_use() const { return in_use_; }
  // The highest end of any allocation since construction, as an offset from base: how much of
  // the region first fit has touched.
  uint64_t high_water() const { return high_water_; }
  // The largest free range.
  uint64_t largest_free() const;

 private:
  uint64_t base_ = 0, size_ = 0, in_use_ = 0, high_water_ = 0;
  std::map<uint64_t, uint64_t> free_;  // start -> length, disjoint, never adjacent
  std::map<uint64_t, uint64_t> live_;  // start -> length
};

}  // namespace trident
