// The prefix cache: a radix tree over whole KV pages of tokens. Each node is one page: the 64
// tokens it holds (its edge from the parent) and the page with their latents. A sequence whose
// tokens start with a cached path reuses those pages instead of computing them again.
//
// Sequences lock the path they use; unlocked nodes stay cached until the pool runs short, when
// the least recently used unlocked leaves are evicted and their pages go back to the pool. Only
// whole pages are cached: a partial last page stays with its sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "cache/kv_page_pool.h"

namespace trident {

class PrefixCache {
 public:
  static constexpr int kPageSize = KvPagePool::kPageSize;

  struct TokensHash {
    size_t operator()(const std::vector<int32_t>& tokens) const;
  };
  struct Node {
    std::vector<int32_t> tokens;  // kPageSize tokens
    int32_t page = -1;
    Node* parent = nullptr;
    std::unordered_map<std::vector<int32_t>, std::unique_ptr<Node>, TokensHash> children;
    int locks = 0;  // sequences using this node or a node below it
    uint64_t last_used = 0;
  };

  // The pool must outlive the cache, which gives its pages back when destroyed.
  explicit PrefixCache(KvPagePool& pool);
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  struct Match {
    std::vector<int32_t> pages;  // the cached pages of the prefix, in order
    Node* node = nullptr;        // the path's last node, locked for the caller; null: no match
    int tokens() const { return int(pages.size()) * kPageSize; }
  };
  // The longest cached prefix of `tokens` in whole pages, locked until unlock(match.node).
  Match match(std::span<const int32_t> tokens);

  // Caches the first `n_pages` whole pages of a sequence: pages[i] holds the latents of
  // tokens[i*64, (i+1)*64). A page whose tokens are already cached under another page is a
  // duplicate: it goes back to the pool and pages[i] becomes the cached one (same latents). The
  // path of the inserted pages is locked for the caller and `locked` (a node of the same path
  // from an earlier match or insert, or null) is unlocked. Returns the new last node.
  Node* insert(std::span<const int32_t> tokens, int n_pages, std::vector<int32_t>& pages,
               Node* locked);

  void unlock(Node* node);

  // Evicts least recently used unlocked leaves until `n_pages` pages went back to the pool or
  // nothing more can be evicted; returns the pages freed.
  int evict(int n_pages);

  int cached_pages() const { return n_nodes_; }
  // Pages evicted since the cache was made.
  int64_t evicted_pages() const { return evicted_pages_; }
  // Cached pages that no sequence uses: what evict() can free.
  int evictable_pages() const { return n_nodes_ - n_locked_; }

 private:
  void lock_path(Node* node, int delta);
  void touch_path(Node* node);

  KvPagePool& pool_;
  std::unique_ptr<Node> root_;
  int n_nodes_ = 0;   // not counting the root, which holds no page
  int n_locked_ = 0;  // nodes with lock count > 0
  uint64_t clock_ = 0;
  int64_t evicted_pages_ = 0;
};

}  // namespace trident
