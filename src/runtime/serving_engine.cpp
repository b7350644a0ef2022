#include "runtime/serving_engine.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "runtime/step_builder.h"

namespace trident {

const float* EngineStepModel::forward(const StepInput& step) {
  Tensor out = engine_.forward(step);
  logits_.resize(out.numel());
  engine_.backend().to_host(out, logits_.data());
  return logits_.data();
}

bool EngineStepModel::forward_sampled(const StepInput& step, std::span<const SampleRow> rows,
                                      std::span<const int> host_rows, std::vector<int32_t>& ids,
                                      std::vector<float>& host_logits) {
  Backend& backend = engine_.backend();
  if (!backend.samples_on_device()) return false;
  Tensor logits = engine_.forward(step);
  const int64_t vocab = logits.row_size();
  Tensor drawn = backend.alloc(DType::I32, {logits.dim(0)});
  backend.sample(logits, rows, drawn);
  host_logits.resize(host_rows.size() * vocab);
  for (size_t i = 0; i < host_rows.size(); ++i)
    backend.to_host(logits.rows(host_rows[i], host_rows[i] + 1), host_logits.data() + i * vocab);
  ids.resize(size_t(logits.dim(0)));
  backend.to_host(drawn, ids.data());
  return true;
}

int64_t EngineStepModel::begin_step(int64_t tokens) {
  ExpertParallel* ep = engine_.expert_parallel();
  // Serving never tells the group it has no work left: rank 0 stops it.
  return ep ? ep->begin_step(tokens, true).total_tokens : tokens;
}

void EngineStepModel::idle_step() { engine_.model().idle_step(); }

std::vector<std::pair<int32_t, float>> top_logprobs(const float* logits, int vocab, int n) {
  n = std::clamp(n, 0, vocab);
  // The same arithmetic as token_logprob, so a token's logprob and its entry here agree.
  const float m = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - m));
  const double log_sum = std::log(sum);
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<std::pair<int32_t, float>> top(n);
  for (int i = 0; i < n; ++i) top[i] = {ids[i], float(logits[ids[i]] - m - log_sum)};
  return top;
}

ServingEngine::ServingEngine(StepModel& model, KvPagePool& pool, const ServingOptions& options)
    : model_(model), pool_(pool), options_(options), scheduler_(pool, options.scheduler) {
  TRI_CHECK(options.max_requests > 0, "max_requests must be positive, got {}",
            options.max_requests);
  if (options.ranks) {
    const size_t n = size_t(options.ranks->size());
    reports_.resize(n);
    in_transit_.assign(n, 0);
    pending_.assign(n, 0);
    assigned_.assign(n, 0);
  }
  publish_stats();
  thread_ = std::thread([this] { options_.ranks ? loop_ranked() : loop(); });
}

ServingEngine::~ServingEngine() { stop(); }

std::shared_ptr<RequestStream> ServingEngine::submit(GenerationRequest request) {
  TRI_CHECK(!options_.ranks || options_.ranks->rank() == 0,
            "requests go to rank 0, which gives them to the ranks; this is rank {}",
            options_.ranks ? options_.ranks->rank() : 0);
  const int context = options_.scheduler.max_context;
  TRI_CHECK(!request.prompt.empty(), "the prompt is empty");
  TRI_CHECK(int(request.prompt.size()) < context,
            "the prompt has {} tokens; the context holds {}, so at most {} fit",
            request.prompt.size(), context, context - 1);
  TRI_CHECK(request.max_new_tokens > 0, "max_new_tokens must be positive, got {}",
            request.max_new_tokens);
  const int vocab = model_.vocab_size();
  for (int32_t t : request.prompt)
    TRI_CHECK(t >= 0 && t < vocab, "prompt token id {} is outside the vocabulary (0..{})", t,
              vocab - 1);
  Sampler{request.sampling};  // checks the sampling parameters

  if (in_flight_.fetch_add(1) >= options_.max_requests) {
    in_flight_.fetch_sub(1);
    return nullptr;
  }
  std::shared_ptr<RequestStream> stream;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      in_flight_.fetch_sub(1);
      return nullptr;
    }
    const uint64_t id = next_id_++;
    stream = std::make_shared<RequestStream>(id);
    inbox_.push_back(make_active(id, std::move(request), stream));
  }
  wake_.notify_one();
  return stream;
}

std::unique_ptr<ServingEngine::Active> ServingEngine::make_active(
    uint64_t id, GenerationRequest request, std::shared_ptr<RequestStream> stream) {
  auto seq = std::make_shared<Sequence>();
  seq->id = id;
  seq->tokens = request.prompt;
  seq->prompt_len = int(request.prompt.size());
  seq->max_new_tokens = request.max_new_tokens;
  Sampler sampler(request.sampling);
  return std::make_unique<Active>(
      Active{std::move(seq), std::move(stream), std::move(request), std::move(sampler)});
}

void ServingEngine::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  join();
}

void ServingEngine::join() {
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  end_everything({"cancelled", "the server is shutting down"});
}

void ServingEngine::end_everything(const RequestEnd& why) {
  std::vector<std::unique_ptr<Active>> never_started;
  {
    std::lock_guard lock(mutex_);
    never_started.swap(inbox_);
  }
  for (auto& a : never_started) end(*a, why);
  for (auto& [id, a] : active_) {
    scheduler_.finish(*a->seq);
    end(*a, why);
  }
  active_.clear();
  for (auto& [id, r] : remote_) {
    ended_.emplace_back(r.client, why);
    in_flight_.fetch_sub(1);
  }
  remote_.clear();
  for_front_.clear();
  publish_stats();
  deliver_ends();
}

std::string ServingEngine::failure() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

void ServingEngine::loop() {
  for (;;) {
    std::vector<std::unique_ptr<Active>> arrivals;
    {
      std::unique_lock lock(mutex_);
      // Idle, the thread sleeps until a request comes; a cancellation needs no wake-up, since
      // only requests the engine holds can be cancelled.
      wake_.wait(lock, [&] { return stopping_ || !inbox_.empty() || !scheduler_.idle(); });
      if (stopping_) return;
      arrivals.swap(inbox_);
    }
    take_new_requests(std::move(arrivals));
    drop_cancelled();
    drop_overdue();
    ScheduledStep step = scheduler_.schedule();
    if (!step.empty()) run_step(step);
    publish_stats();
    deliver_ends();
  }
}

void ServingEngine::deliver_ends() {
  for (auto& [stream, end] : ended_) stream->end(std::move(end));
  ended_.clear();
}

void ServingEngine::take_new_requests(std::vector<std::unique_ptr<Active>> arrivals) {
  for (auto& a : arrivals) {
    scheduler_.add(a->seq);
    uint64_t id = a->seq->id;
    active_.emplace(id, std::move(a));
  }
}

void ServingEngine::drop_cancelled() {
  for (auto it = active_.begin(); it != active_.end();) {
    Active& a = *it->second;
    if (!a.stream->cancelled()) {
      ++it;
      continue;
    }
    scheduler_.finish(*a.seq);
    end(a, {"cancelled", ""});
    it = active_.erase(it);
  }
}

void ServingEngine::drop_overdue() {
  const auto limit = options_.max_queue_wait;
  if (limit.count() <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  for (auto it = active_.begin(); it != active_.end();) {
    Active& a = *it->second;
    // A request preempted after it started keeps its place: it is never dropped.
    if (a.seq->running || a.seq->counted_prompt || now - a.arrival <= limit) {
      ++it;
      continue;
    }
    scheduler_.finish(*a.seq);
    end(a, {"timeout",
            fmt::format("it waited {:.1f} s in the queue without starting, longer than this "
                        "server allows (--max-queue-seconds {}): the server is overloaded; retry "
                        "later",
                        std::chrono::duration<double>(now - a.arrival).count(), limit.count())});
    it = active_.erase(it);
  }
}

void ServingEngine::run_step(const ScheduledStep& step) {
  const int vocab = model_.vocab_size();
  // The rows that want a token, their requests, and their sampling parameters (the step of each
  // is the count of tokens its request generated: its place in the request's random stream).
  std::vector<Active*> wanting;
  std::vector<SampleRow> rows;
  std::vector<int> host_rows;
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    if (!step.chunks[i].want_logits) continue;
    Active& a = *active_.at(step.seqs[i]->id);
    const SamplingParams& p = a.request.sampling;
    if (a.request.logprobs || a.request.top_logprobs > 0) host_rows.push_back(int(rows.size()));
    rows.push_back({p.temperature, p.top_k, p.top_p, p.seed, int64_t(a.seq->generated())});
    wanting.push_back(&a);
  }
  const float* logits = nullptr;
  std::vector<int32_t> ids;
  bool sampled = false;
  try {
    const StepInput in = build_step(step.chunks);
    sampled = model_.forward_sampled(in, rows, host_rows, ids, device_logits_);
    if (!sampled) logits = model_.forward(in);
  } catch (const std::exception& e) {
    // Ranks share every step: one rank's failure is the group's.
    if (options_.ranks) throw;
    // A failed step fails the requests in it; the others go on.
    spdlog::error("step of {} tokens for {} requests failed: {}", step.tokens, step.seqs.size(),
                  e.what());
    for (Sequence* seq : step.seqs) {
      auto it = active_.find(seq->id);
      scheduler_.finish(*seq);
      end(*it->second, {"error", fmt::format("the model step failed: {}", e.what())});
      active_.erase(it);
    }
    return;
  }
  scheduler_.step_done(step);
  size_t next_host_row = 0;
  for (size_t r = 0; r < wanting.size(); ++r) {
    Active& a = *wanting[r];
    if (!sampled) {
      const float* row = logits + int64_t(r) * vocab;
      emit(a, a.sampler.sample(row, vocab), row);
      continue;
    }
    const float* row = nullptr;
    if (next_host_row < host_rows.size() && host_rows[next_host_row] == int(r))
      row = device_logits_.data() + int64_t(next_host_row++) * vocab;
    emit(a, {ids[r], row ? token_logprob(row, vocab, ids[r]) : 0.0f}, row);
  }
}

void ServingEngine::emit(Active& a, SampledToken t, const float* logits) {
  const int vocab = model_.vocab_size();
  Sequence& seq = *a.seq;
  TokenEvent event{t.id, t.logprob, {}};
  if (a.request.top_logprobs > 0 && logits)
    event.top_logprobs = top_logprobs(logits, vocab, a.request.top_logprobs);
  a.stream->push(std::move(event));
  scheduler_.append(seq, t.id);
  ++generated_tokens_;

  auto listed = [&](const std::vector<int32_t>& ids) {
    return std::find(ids.begin(), ids.end(), t.id) != ids.end();
  };
  const char* reason = nullptr;
  if ((!a.request.ignore_eos && listed(options_.eos_token_ids)) || listed(a.request.stop_token_ids))
    reason = "stop";
  else if (seq.generated() >= seq.max_new_tokens ||
           int(seq.tokens.size()) >= options_.scheduler.max_context)
    reason = "length";
  if (!reason) return;
  const uint64_t id = seq.id;
  scheduler_.finish(seq);
  end(a, {reason, ""});
  active_.erase(id);  // destroys `a`
}

void ServingEngine::end(Active& a, RequestEnd end) {
  end.prompt_tokens = a.seq->prompt_len;
  end.cached_prompt_tokens = a.seq->cached_prompt_tokens;
  end.completion_tokens = std::max(a.seq->generated(), 0);
  end.preemptions = a.seq->preemptions;
  ended_.emplace_back(a.stream, std::move(end));
  in_flight_.fetch_sub(1);
}

void ServingEngine::publish_stats() {
  ServingStats s;
  s.scheduler = scheduler_.stats();
  s.in_flight = in_flight_.load();
  s.queued = std::max(0, s.in_flight - s.scheduler.running);
  s.kv_pages_total = pool_.total_pages();
  s.kv_pages_used = pool_.used_pages();
  s.kv_pages_cached = scheduler_.prefix_cache() ? scheduler_.prefix_cache()->cached_pages() : 0;
  s.kv_utilization = pool_.utilization();
  s.kv_fragmentation = pool_.fragmentation();
  s.generated_tokens = generated_tokens_;
  if (options_.ranks && options_.ranks->rank() == 0) add_group_stats(s);
  std::lock_guard lock(stats_mutex_);
  stats_ = s;
}

ServingStats ServingEngine::stats() const {
  std::lock_guard lock(stats_mutex_);
  return stats_;
}

}  // namespace trident
