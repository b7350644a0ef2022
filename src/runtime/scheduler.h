// The scheduler: continuous batching with chunked prefill. Each step it picks what runs under a
// token budget: first one decode token for every running sequence, then chunks of prefills
// already started, then new sequences from the waiting queue, first come first served. It owns
// the sequences' KV pages: a sequence is admitted only when the pool (free pages plus cached
// pages nobody uses) can hold its whole prompt; when a running sequence needs a page and none is
// left, cached pages are evicted, then the most recently arrived sequence is preempted (its pages
// freed, its tokens kept) and goes back to the head of the queue to be recomputed later.
//
// Single-threaded: the engine thread calls everything here.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "cache/kv_page_pool.h"
#include "cache/prefix_cache.h"
#include "runtime/step_builder.h"

namespace trident {

struct SchedulerOptions {
  int max_running = 64;   // sequences in one step
  int step_tokens = 512;  // tokens in one step: decodes plus prefill chunks
  int max_context = 0;    // tokens per sequence, prompt and generated
  bool prefix_cache = true;
};

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // the prompt, then the generated tokens
  int prompt_len = 0;
  int max_new_tokens = 0;

  // Scheduler state.
  uint64_t arrival = 0;        // admission order; preempted sequences keep theirs
  int computed = 0;            // tokens whose latents are in `pages`
  std::vector<int32_t> pages;  // KV pages in order; the first `shared_pages` belong to the cache
  int shared_pages = 0;
  PrefixCache::Node* cache_node = nullptr;  // the cached path this sequence locks
  bool running = false;
  uint64_t scheduled_step = 0;  // the last step this sequence is part of
  bool counted_prompt = false;  // prefix-cache statistics counted (first admission only)
  int cached_prompt_tokens = 0;
  int preemptions = 0;

  int generated() const { return int(tokens.size()) - prompt_len; }
  bool prefilling() const { return int(tokens.size()) - computed > 1; }
};

// One step: the chunks to run, in order, and the sequence of each.
struct ScheduledStep {
  std::vector<StepChunk> chunks;
  std::vector<Sequence*> seqs;
  int tokens = 0;
  bool empty() const { return chunks.empty(); }
};

struct SchedulerStats {
  int waiting = 0;
  int running = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;         // of admitted sequences, first admission
  int64_t cached_prompt_tokens = 0;  // of those, served by the prefix cache
  int64_t evicted_pages = 0;         // cached pages given back to the pool for lack of free ones
  int64_t computed_tokens = 0;       // tokens run through the model, recomputation included
  int64_t steps = 0;
};

class Scheduler {
 public:
  // The pool must hold at least one sequence of max_context tokens, so that the oldest sequence
  // can always run to the end.
  Scheduler(KvPagePool& pool, const SchedulerOptions& options);
  ~Scheduler();

  // Queues a sequence (prompt in `tokens`); it keeps its place behind those already queued.
  void add(std::shared_ptr<Sequence> seq);

  // Plans the next step and gives its sequences the pages it writes. Empty when nothing can run.
  ScheduledStep schedule();
  // The step ran: its tokens' latents are in the cache.
  void step_done(const ScheduledStep& step);

  // A running sequence's next token (it decodes it in a later step).
  void append(Sequence& seq, int32_t token) { seq.tokens.push_back(token); }
  // Removes a sequence, running or waiting, and frees its pages; its whole pages stay cached.
  void finish(Sequence& seq);

  bool idle() const { return running_.empty() && waiting_.empty(); }
  const std::vector<std::shared_ptr<Sequence>>& running() const { return running_; }
  const std::deque<std::shared_ptr<Sequence>>& waiting() const { return waiting_; }
  SchedulerStats stats() const;
  KvPagePool& pool() { return pool_; }
  PrefixCache* prefix_cache() { return cache_.get(); }
  const PrefixCache* prefix_cache() const { return cache_.get(); }
  const SchedulerOptions& options() const { return options_; }

 private:
  // Gives `seq` pages for `n_tokens` tokens, evicting cached pages and then preempting sequences
  // that arrived after it and are not in `step` when the pool is short. False when even that is
  // not enough.
  bool grow(Sequence& seq, int n_tokens, const ScheduledStep& step);
  bool try_admit(Sequence& seq);
  void add_chunk(ScheduledStep& step, Sequence& seq, int count);
  void preempt(Sequence& seq);
  void release_pages(Sequence& seq);
  void mark_filled(Sequence& seq, int from, int to);
  void queue_in_order(std::shared_ptr<Sequence> seq);
  int available_pages() const;

  KvPagePool& pool_;
  SchedulerOptions options_;
  std::unique_ptr<PrefixCache> cache_;
  std::vector<std::shared_ptr<Sequence>> running_;  // by arrival
  std::deque<std::shared_ptr<Sequence>> waiting_;   // by arrival
  uint64_t next_arrival_ = 0;
  SchedulerStats stats_;
};

}  // namespace trident
