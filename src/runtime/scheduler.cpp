#include "runtime/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace trident {

namespace {

constexpr int P = KvPagePool::kPageSize;

}  // namespace

Scheduler::Scheduler(KvPagePool& pool, const SchedulerOptions& options)
    : pool_(pool), options_(options) {
  TRI_CHECK(options.max_running > 0, "scheduler: max_running must be positive, got {}",
            options.max_running);
  TRI_CHECK(options.step_tokens > 0, "scheduler: step_tokens must be positive, got {}",
            options.step_tokens);
  TRI_CHECK(options.max_context > 1, "scheduler: max_context must be above 1, got {}",
            options.max_context);
  TRI_CHECK(pages_for_tokens(options.max_context, P) <= pool.total_pages(),
            "the KV pool has {} pages of {} tokens, too few for one sequence of the {}-token "
            "context: give it at least {} pages or shorten the context",
            pool.total_pages(), P, options.max_context, pages_for_tokens(options.max_context, P));
  if (options.prefix_cache) cache_ = std::make_unique<PrefixCache>(pool);
}

Scheduler::~Scheduler() {
  for (auto& seq : running_) release_pages(*seq);
}

void Scheduler::add(std::shared_ptr<Sequence> seq) {
  TRI_CHECK(seq->prompt_len > 0 && seq->prompt_len == int(seq->tokens.size()),
            "scheduler: sequence {} has a {}-token prompt and {} tokens", seq->id, seq->prompt_len,
            seq->tokens.size());
  TRI_CHECK(seq->prompt_len < options_.max_context,
            "scheduler: sequence {} has a {}-token prompt; the context holds {}", seq->id,
            seq->prompt_len, options_.max_context);
  seq->arrival = next_arrival_++;
  seq->computed = 0;
  waiting_.push_back(std::move(seq));
}

int Scheduler::available_pages() const {
  return pool_.free_pages() + (cache_ ? cache_->evictable_pages() : 0);
}

void Scheduler::mark_filled(Sequence& seq, int from, int to) {
  for (int page = from / P; page * P < to; ++page)
    if (page >= seq.shared_pages) pool_.set_filled(seq.pages[page], std::min(P, to - page * P));
}

void Scheduler::release_pages(Sequence& seq) {
  if (seq.cache_node) cache_->unlock(seq.cache_node);
  seq.cache_node = nullptr;
  for (size_t i = seq.shared_pages; i < seq.pages.size(); ++i) pool_.release(seq.pages[i]);
  seq.pages.clear();
  seq.shared_pages = 0;
  seq.computed = 0;
}

void Scheduler::queue_in_order(std::shared_ptr<Sequence> seq) {
  auto at = std::upper_bound(waiting_.begin(), waiting_.end(), seq->arrival,
                             [](uint64_t a, const auto& s) { return a < s->arrival; });
  waiting_.insert(at, std::move(seq));
}

void Scheduler::preempt(Sequence& seq) {
  auto it = std::find_if(running_.begin(), running_.end(),
                         [&](const auto& s) { return s.get() == &seq; });
  TRI_CHECK(it != running_.end(), "scheduler: preempting sequence {}, which is not running",
            seq.id);
  std::shared_ptr<Sequence> owned = *it;
  running_.erase(it);
  release_pages(seq);
  seq.running = false;
  ++seq.preemptions;
  ++stats_.preemptions;
  queue_in_order(std::move(owned));
}

bool Scheduler::grow(Sequence& seq, int n_tokens, const ScheduledStep& step) {
  const int need = pages_for_tokens(n_tokens, P) - int(seq.pages.size());
  if (need <= 0) return true;
  const uint64_t this_step = uint64_t(stats_.steps) + 1;
  while (pool_.free_pages() < need) {
    if (cache_ && cache_->evict(need - pool_.free_pages()) > 0) continue;
    // The most recently arrived sequence not already in this step gives its pages up.
    Sequence* victim = nullptr;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      Sequence& s = **it;
      if (s.arrival <= seq.arrival) break;
      if (s.scheduled_step != this_step) {
        victim = &s;
        break;
      }
    }
    if (!victim) return false;
    preempt(*victim);
  }
  return pool_.allocate(need, seq.pages);
}

bool Scheduler::try_admit(Sequence& seq) {
  if (cache_ && seq.computed == 0 && seq.pages.empty()) {
    // The last token is always computed: its logits give the next token.
    PrefixCache::Match m =
        cache_->match(std::span<const int32_t>(seq.tokens.data(), seq.tokens.size() - 1));
    seq.computed = m.tokens();
    seq.pages = std::move(m.pages);
    seq.shared_pages = int(seq.pages.size());
    seq.cache_node = m.node;
  }
  const int need = pages_for_tokens(int64_t(seq.tokens.size()) + 1, P) - int(seq.pages.size());
  if (!running_.empty() && need > available_pages()) {
    release_pages(seq);
    return false;
  }
  if (!seq.counted_prompt) {
    seq.counted_prompt = true;
    seq.cached_prompt_tokens = std::min(seq.computed, seq.prompt_len);
    stats_.prompt_tokens += seq.prompt_len;
    stats_.cached_prompt_tokens += seq.cached_prompt_tokens;
  }
  return true;
}

void Scheduler::add_chunk(ScheduledStep& step, Sequence& seq, int count) {
  const bool last = seq.computed + count == int(seq.tokens.size());
  step.chunks.push_back({&seq.tokens, seq.computed, count, &seq.pages, last});
  step.seqs.push_back(&seq);
  step.tokens += count;
  seq.scheduled_step = uint64_t(stats_.steps) + 1;
  mark_filled(seq, seq.computed, seq.computed + count);
}

ScheduledStep Scheduler::schedule() {
  ScheduledStep step;
  int budget = options_.step_tokens;

  // Decodes first, oldest first: a sequence that cannot get a page is the most recent one left
  // and gives its own pages up.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& seq = *running_[i];
    if (seq.prefilling()) {
      ++i;
      continue;
    }
    if (!grow(seq, seq.computed + 1, step)) {
      preempt(seq);
      continue;
    }
    add_chunk(step, seq, 1);
    --budget;
    ++i;
  }

  // Then chunks of prefills already under way, oldest first, as much as the pages allow.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& seq = *running_[i];
    if (!seq.prefilling()) continue;
    const int want = std::min(int(seq.tokens.size()) - seq.computed, budget);
    int n = want;
    if (!grow(seq, seq.computed + n, step)) {
      n = std::min(want, int(seq.pages.size()) * P + pool_.free_pages() * P - seq.computed);
      if (n <= 0 || !grow(seq, seq.computed + n, step)) continue;
    }
    add_chunk(step, seq, n);
    budget -= n;
  }

  // Then new sequences, first come first served: when the head of the queue does not fit, the
  // others wait behind it.
  while (!waiting_.empty() && budget > 0 && int(running_.size()) < options_.max_running) {
    std::shared_ptr<Sequence> seq = waiting_.front();
    if (!try_admit(*seq)) break;
    waiting_.pop_front();
    seq->running = true;
    auto at = std::upper_bound(running_.begin(), running_.end(), seq->arrival,
                               [](uint64_t a, const auto& s) { return a < s->arrival; });
    Sequence& s = **running_.insert(at, seq);
    const int n = std::min(int(s.tokens.size()) - s.computed, budget);
    if (!grow(s, s.computed + n, step)) break;
    add_chunk(step, s, n);
    budget -= n;
  }
  return step;
}

void Scheduler::step_done(const ScheduledStep& step) {
  ++stats_.steps;
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    Sequence& seq = *step.seqs[i];
    seq.computed += step.chunks[i].count;
    stats_.computed_tokens += step.chunks[i].count;
    const int whole = seq.computed / P;
    if (cache_ && whole > seq.shared_pages) {
      seq.cache_node = cache_->insert(seq.tokens, whole, seq.pages, seq.cache_node);
      seq.shared_pages = whole;
    }
  }
}

void Scheduler::finish(Sequence& seq) {
  auto same = [&](const auto& s) { return s.get() == &seq; };
  if (auto it = std::find_if(running_.begin(), running_.end(), same); it != running_.end()) {
    release_pages(seq);
    seq.running = false;
    running_.erase(it);
    return;
  }
  if (auto it = std::find_if(waiting_.begin(), waiting_.end(), same); it != waiting_.end())
    waiting_.erase(it);
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = stats_;
  s.waiting = int(waiting_.size());
  s.running = int(running_.size());
  if (cache_) s.evicted_pages = cache_->evicted_pages();
  return s;
}

}  // namespace trident
