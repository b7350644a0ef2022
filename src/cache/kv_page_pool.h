// The pool of KV cache pages: hands out page ids and takes them back. A page holds the latents of
// AttentionMeta::kPageSize consecutive tokens of one sequence (or of a cached prefix that several
// sequences share).
#pragma once

#include <cstdint>
#include <vector>

namespace trident {

class KvPagePool {
 public:
  static constexpr int kPageSize = 64;  // AttentionMeta::kPageSize

  explicit KvPagePool(int n_pages);

  // Appends n free pages to `out`, or returns false and takes none when fewer are free.
  bool allocate(int n, std::vector<int32_t>& out);
  void release(const std::vector<int32_t>& pages);
  void release(int32_t page);

  // How many of a page's token slots hold a token, as its owner reports: allocated but unfilled
  // slots are the pool's fragmentation. A released page counts as empty.
  void set_filled(int32_t page, int slots);
  int filled(int32_t page) const { return filled_[page]; }

  int total_pages() const { return int(in_use_.size()); }
  int free_pages() const { return int(free_.size()); }
  int used_pages() const { return total_pages() - free_pages(); }
  bool in_use(int32_t page) const { return in_use_[page]; }
  int64_t filled_slots() const { return filled_slots_; }
  // Used pages over all pages.
  double utilization() const { return double(used_pages()) / total_pages(); }
  // Allocated but unused token slots over allocated slots; 0 when nothing is allocated.
  double fragmentation() const;

 private:
  void check_in_use(int32_t page, const char* what) const;

  std::vector<int32_t> free_;  // a stack: the most recently released page is reused first
  std::vector<bool> in_use_;
  std::vector<int> filled_;
  int64_t filled_slots_ = 0;
};

// Pages needed to hold n tokens.
constexpr int pages_for_tokens(int64_t n, int page_size) {
  return int((n + page_size - 1) / page_size);
}

}  // namespace trident
