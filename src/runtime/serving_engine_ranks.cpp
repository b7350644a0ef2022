// The serving engine across the data-parallel ranks of an expert-parallel group: the loop every
// rank runs, rank 0's choice of rank for each request, and the tokens coming back to it.
#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "runtime/serving_engine.h"

namespace trident {

namespace {

using namespace std::chrono_literals;

constexpr int kPage = KvPagePool::kPageSize;

}  // namespace

void ServingEngine::loop_ranked() {
  Communicator& comm = *options_.ranks;
  const bool front = comm.rank() == 0;
  // An idle group still meets this often, so that no rank's wait for rank 0 times out.
  const auto heartbeat = std::min<std::chrono::milliseconds>(comm.timeout() / 4, 1000ms);
  try {
    for (;;) {
      RankMessage mine;
      std::vector<std::unique_ptr<Active>> arrivals;
      {
        std::unique_lock lock(mutex_);
        // Only rank 0 waits for requests; the others wait for rank 0 in the exchange.
        if (front && !group_busy_)
          wake_.wait_for(lock, heartbeat, [&] { return stopping_ || !inbox_.empty(); });
        arrivals.swap(inbox_);
        mine.stop = stopping_;
      }
      if (front)
        route(std::move(arrivals), mine);
      else
        send_back(mine);
      mine.report = report();
      const std::vector<RankMessage> all =
          exchange_messages(comm, mine, "serving: requests, tokens and loads");
      bool stop = false;
      group_busy_ = false;
      for (const RankMessage& m : all) {
        stop |= m.stop;
        group_busy_ |= m.report.has_work || !m.assignments.empty();
      }
      receive(all);
      if (stop) return;
      drop_cancelled();
      drop_overdue();
      ScheduledStep step = scheduler_.schedule();
      // Every rank decides from the same messages whether the group steps at all.
      if (group_busy_) {
        const int64_t group_tokens = model_.begin_step(step.tokens);
        if (!step.empty())
          run_step(step);
        else if (group_tokens > 0)
          model_.idle_step();
      }
      publish_stats();
      deliver_ends();
    }
  } catch (const std::exception& e) {
    fail_group(e.what());
  }
}

void ServingEngine::route(std::vector<std::unique_ptr<Active>> arrivals, RankMessage& out) {
  const int n = int(reports_.size());
  for (auto& a : arrivals) {
    std::vector<int64_t> loads(n);
    for (int r = 0; r < n; ++r) loads[r] = reports_[r].load(kPage) + in_transit_[r] + pending_[r];
    const int rank = least_loaded_rank(loads, assigned_);
    ++assigned_[rank];
    pending_[rank] += a->seq->prompt_len;
    if (rank == 0) {
      std::vector<std::unique_ptr<Active>> here;
      here.push_back(std::move(a));
      take_new_requests(std::move(here));
      continue;
    }
    const uint64_t id = a->seq->id;
    remote_.emplace(id, Remote{a->stream, rank, false});
    out.assignments.push_back({rank, id, std::move(a->request)});
  }
  for (auto& [id, r] : remote_) {
    if (r.cancel_sent || !r.client->cancelled()) continue;
    out.cancels.push_back({r.rank, id});
    r.cancel_sent = true;
  }
}

void ServingEngine::send_back(RankMessage& out) {
  for (auto it = for_front_.begin(); it != for_front_.end();) {
    RankMessage::Update u;
    u.id = it->first;
    const bool ended = it->second->wait(u.tokens, 0ms);
    if (ended) u.end = it->second->ended();
    if (!u.tokens.empty() || ended) out.updates.push_back(std::move(u));
    it = ended ? for_front_.erase(it) : std::next(it);
  }
}

void ServingEngine::receive(const std::vector<RankMessage>& all) {
  const int me = options_.ranks->rank();
  for (size_t r = 0; r < all.size(); ++r) reports_[r] = all[r].report;
  if (me == 0) {
    // The figures first: a client that sees a token finds /metrics counting its rank's state.
    publish_stats();
    for (size_t r = 1; r < all.size(); ++r)
      for (const RankMessage::Update& u : all[r].updates) {
        auto it = remote_.find(u.id);
        if (it == remote_.end()) continue;
        for (const TokenEvent& t : u.tokens) it->second.client->push(t);
        if (!u.end) continue;
        ended_.emplace_back(it->second.client, *u.end);
        in_flight_.fetch_sub(1);
        remote_.erase(it);
      }
    // What went to other ranks in this exchange shows in their reports at the next; rank 0's
    // own share is in the report it just sent.
    in_transit_ = pending_;
    in_transit_[0] = 0;
    std::fill(pending_.begin(), pending_.end(), 0);
    return;
  }
  std::vector<std::unique_ptr<Active>> mine;
  for (const RankMessage::Assignment& a : all[0].assignments) {
    if (a.rank != me) continue;
    auto stream = std::make_shared<RequestStream>(a.id);
    for_front_.emplace(a.id, stream);
    mine.push_back(make_active(a.id, a.request, stream));
    in_flight_.fetch_add(1);
  }
  take_new_requests(std::move(mine));
  // A request may have ended here while rank 0 asked to cancel it: nothing to do then.
  for (const RankMessage::Cancel& c : all[0].cancels)
    if (auto it = for_front_.find(c.id); c.rank == me && it != for_front_.end())
      it->second->cancel();
}

RankReport ServingEngine::report() const {
  RankReport r;
  r.has_work = !scheduler_.idle() || !for_front_.empty();
  for (const auto& seq : scheduler_.running())
    r.queued_tokens += int64_t(seq->tokens.size()) - seq->computed;
  for (const auto& seq : scheduler_.waiting())
    r.queued_tokens += int64_t(seq->tokens.size()) - seq->computed;
  const PrefixCache* cache = scheduler_.prefix_cache();
  r.held_pages = pool_.used_pages() - (cache ? cache->evictable_pages() : 0);
  const SchedulerStats s = scheduler_.stats();
  r.running = s.running;
  r.waiting = s.waiting;
  r.kv_pages_total = pool_.total_pages();
  r.kv_pages_used = pool_.used_pages();
  r.kv_pages_cached = cache ? cache->cached_pages() : 0;
  r.kv_filled_slots = pool_.filled_slots();
  r.preemptions = s.preemptions;
  r.prompt_tokens = s.prompt_tokens;
  r.cached_prompt_tokens = s.cached_prompt_tokens;
  r.evicted_pages = s.evicted_pages;
  r.computed_tokens = s.computed_tokens;
  r.steps = s.steps;
  r.generated_tokens = generated_tokens_;
  return r;
}

void ServingEngine::add_group_stats(ServingStats& s) const {
  int64_t filled = pool_.filled_slots();
  s.ranks.assign(reports_.size(), {});
  for (size_t r = 0; r < reports_.size(); ++r) {
    const RankReport& p = r == 0 ? report() : reports_[r];
    s.ranks[r] = {assigned_[r], p.running, p.waiting, p.queued_tokens, p.kv_pages_used};
    if (r == 0) continue;
    SchedulerStats& t = s.scheduler;
    t.running += int(p.running);
    t.waiting += int(p.waiting);
    t.preemptions += p.preemptions;
    t.prompt_tokens += p.prompt_tokens;
    t.cached_prompt_tokens += p.cached_prompt_tokens;
    t.evicted_pages += p.evicted_pages;
    t.computed_tokens += p.computed_tokens;
    t.steps += p.steps;
    s.kv_pages_total += int(p.kv_pages_total);
    s.kv_pages_used += int(p.kv_pages_used);
    s.kv_pages_cached += int(p.kv_pages_cached);
    s.generated_tokens += p.generated_tokens;
    filled += p.kv_filled_slots;
  }
  s.queued = std::max(0, s.in_flight - s.scheduler.running);
  s.kv_utilization = s.kv_pages_total ? double(s.kv_pages_used) / s.kv_pages_total : 0.0;
  const int64_t slots = int64_t(s.kv_pages_used) * kPage;
  s.kv_fragmentation = slots ? double(slots - filled) / double(slots) : 0.0;
}

void ServingEngine::fail_group(const std::string& why) {
  spdlog::error("serving across ranks stopped: {}", why);
  {
    std::lock_guard lock(mutex_);
    failure_ = why;
    stopping_ = true;
  }
  end_everything({"error", why});
  if (options_.on_group_failure) options_.on_group_failure(why);
}

}  // namespace trident
