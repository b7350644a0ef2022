// The pool of KV cache pages: hands out page ids and takes them back. A page holds the latents of
// AttentionMeta::kPageSize consecutive tokens of one sequence.
#pragma once

#include <cstdint>
#include <vector>

namespace trident {

class KvPagePool {
 public:
  explicit KvPagePool(int n_pages);

  // Appends n free pages to `out`, or returns false and takes none when fewer are free.
  bool allocate(int n, std::vector<int32_t>& out);
  void release(const std::vector<int32_t>& pages);

  int total_pages() const { return int(in_use_.size()); }
  int free_pages() const { return int(free_.size()); }
  int used_pages() const { return total_pages() - free_pages(); }

 private:
  std::vector<int32_t> free_;  // a stack: the most recently released page is reused first
  std::vector<bool> in_use_;
};

// Pages needed to hold n tokens.
constexpr int pages_for_tokens(int64_t n, int page_size) { return int((n + page_size - 1) / page_size); }

}  // namespace trident
