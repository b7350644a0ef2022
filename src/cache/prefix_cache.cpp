#include "cache/prefix_cache.h"

#include <algorithm>
#include <queue>

#include "core/error.h"

namespace trident {

size_t PrefixCache::TokensHash::operator()(const std::vector<int32_t>& tokens) const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the token ids
  for (int32_t t : tokens) {
    h ^= uint32_t(t);
    h *= 1099511628211ull;
  }
  return size_t(h);
}

PrefixCache::PrefixCache(KvPagePool& pool) : pool_(pool), root_(std::make_unique<Node>()) {}

PrefixCache::~PrefixCache() {
  std::vector<Node*> stack = {root_.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (n->page >= 0) pool_.release(n->page);
    for (auto& [key, child] : n->children) stack.push_back(child.get());
  }
}

void PrefixCache::lock_path(Node* node, int delta) {
  for (; node && node != root_.get(); node = node->parent) {
    if (delta > 0 && node->locks++ == 0) ++n_locked_;
    if (delta < 0) {
      TRI_CHECK(node->locks > 0, "prefix cache: page {} unlocked more often than locked",
                node->page);
      if (--node->locks == 0) --n_locked_;
    }
  }
}

void PrefixCache::touch_path(Node* node) {
  ++clock_;
  for (; node && node != root_.get(); node = node->parent) node->last_used = clock_;
}

PrefixCache::Match PrefixCache::match(std::span<const int32_t> tokens) {
  Match m;
  Node* node = root_.get();
  std::vector<int32_t> key(kPageSize);
  for (size_t start = 0; start + kPageSize <= tokens.size(); start += kPageSize) {
    std::copy_n(tokens.begin() + start, kPageSize, key.begin());
    auto it = node->children.find(key);
    if (it == node->children.end()) break;
    node = it->second.get();
    m.pages.push_back(node->page);
  }
  if (node == root_.get()) return m;
  m.node = node;
  lock_path(node, +1);
  touch_path(node);
  return m;
}

PrefixCache::Node* PrefixCache::insert(std::span<const int32_t> tokens, int n_pages,
                                       std::vector<int32_t>& pages, Node* locked) {
  TRI_CHECK(n_pages >= 0 && size_t(n_pages) * kPageSize <= tokens.size() &&
                size_t(n_pages) <= pages.size(),
            "prefix cache: inserting {} pages of a sequence with {} tokens and {} pages", n_pages,
            tokens.size(), pages.size());
  Node* node = root_.get();
  for (int i = 0; i < n_pages; ++i) {
    std::vector<int32_t> key(tokens.begin() + int64_t(i) * kPageSize,
                             tokens.begin() + int64_t(i + 1) * kPageSize);
    auto it = node->children.find(key);
    if (it != node->children.end()) {
      Node* cached = it->second.get();
      if (cached->page != pages[i]) {
        pool_.release(pages[i]);
        pages[i] = cached->page;
      }
      node = cached;
      continue;
    }
    auto child = std::make_unique<Node>();
    child->tokens = std::move(key);
    child->page = pages[i];
    child->parent = node;
    pool_.set_filled(pages[i], kPageSize);
    Node* raw = child.get();
    node->children.emplace(raw->tokens, std::move(child));
    ++n_nodes_;
    node = raw;
  }
  if (node == root_.get()) node = nullptr;
  lock_path(node, +1);
  lock_path(locked, -1);
  touch_path(node);
  return node;
}

void PrefixCache::unlock(Node* node) { lock_path(node, -1); }

int PrefixCache::evict(int n_pages) {
  auto later = [](const Node* a, const Node* b) { return a->last_used > b->last_used; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later)> leaves(later);
  std::vector<Node*> stack = {root_.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& [key, child] : n->children) stack.push_back(child.get());
    if (n != root_.get() && n->children.empty() && n->locks == 0) leaves.push(n);
  }
  int freed = 0;
  while (freed < n_pages && !leaves.empty()) {
    Node* leaf = leaves.top();
    leaves.pop();
    Node* parent = leaf->parent;
    pool_.release(leaf->page);
    std::vector<int32_t> key = std::move(leaf->tokens);
    parent->children.erase(key);
    --n_nodes_;
    ++evicted_pages_;
    ++freed;
    if (parent != root_.get() && parent->children.empty() && parent->locks == 0)
      leaves.push(parent);
  }
  return freed;
}

}  // namespace trident
