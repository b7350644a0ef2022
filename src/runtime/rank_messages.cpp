#include "runtime/rank_messages.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/error.h"

namespace trident {

namespace {

// Plain values in this host's byte order: every rank runs the same binary.
class Writer {
 public:
  template <class T>
  void put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_.append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  void put(const std::string& s) {
    put(uint64_t(s.size()));
    out_ += s;
  }
  template <class T>
  void put(const std::vector<T>& v) {
    put(uint64_t(v.size()));
    for (const T& x : v) put(x);
  }
  void put(const std::pair<int32_t, float>& p) {
    put(p.first);
    put(p.second);
  }
  void put(const GenerationRequest& r) {
    put(r.prompt);
    put(int32_t(r.max_new_tokens));
    put(r.sampling.temperature);
    put(int32_t(r.sampling.top_k));
    put(r.sampling.top_p);
    put(r.sampling.seed);
    put(int32_t(r.top_logprobs));
    put(uint8_t(r.ignore_eos));
    put(r.stop_token_ids);
  }
  void put(const TokenEvent& e) {
    put(e.token);
    put(e.logprob);
    put(e.top_logprobs);
  }
  void put(const RequestEnd& e) {
    put(e.finish_reason);
    put(e.error);
    put(int32_t(e.prompt_tokens));
    put(int32_t(e.cached_prompt_tokens));
    put(int32_t(e.completion_tokens));
    put(int32_t(e.preemptions));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T));
    T value;
    std::memcpy(&value, in_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string get_string() {
    const uint64_t n = get<uint64_t>();
    need(n);
    std::string s(in_.substr(at_, n));
    at_ += n;
    return s;
  }
  template <class T>
  std::vector<T> get_values() {
    const uint64_t n = count(sizeof(T));
    std::vector<T> v(n);
    for (T& x : v) x = get<T>();
    return v;
  }
  // A count of items each at least `item_bytes` long, checked against what is left.
  uint64_t count(size_t item_bytes) {
    const uint64_t n = get<uint64_t>();
    TRI_CHECK(n <= (in_.size() - at_) / item_bytes,
              "rank message: {} items announced, {} bytes left", n, in_.size() - at_);
    return n;
  }
  GenerationRequest get_request() {
    GenerationRequest r;
    r.prompt = get_values<int32_t>();
    r.max_new_tokens = get<int32_t>();
    r.sampling.temperature = get<float>();
    r.sampling.top_k = get<int32_t>();
    r.sampling.top_p = get<float>();
    r.sampling.seed = get<uint64_t>();
    r.top_logprobs = get<int32_t>();
    r.ignore_eos = get<uint8_t>() != 0;
    r.stop_token_ids = get_values<int32_t>();
    return r;
  }
  TokenEvent get_event() {
    TokenEvent e;
    e.token = get<int32_t>();
    e.logprob = get<float>();
    e.top_logprobs.resize(count(sizeof(int32_t) + sizeof(float)));
    for (auto& [token, logprob] : e.top_logprobs) {
      token = get<int32_t>();
      logprob = get<float>();
    }
    return e;
  }
  RequestEnd get_end() {
    RequestEnd e;
    e.finish_reason = get_string();
    e.error = get_string();
    e.prompt_tokens = get<int32_t>();
    e.cached_prompt_tokens = get<int32_t>();
    e.completion_tokens = get<int32_t>();
    e.preemptions = get<int32_t>();
    return e;
  }
  bool done() const { return at_ == in_.size(); }

 private:
  void need(size_t n) const {
    TRI_CHECK(n <= in_.size() - at_, "rank message: {} bytes needed at offset {}, {} in all", n,
              at_, in_.size());
  }

  std::string_view in_;
  size_t at_ = 0;
};

}  // namespace

std::string encode(const RankMessage& m) {
  Writer w;
  w.put(uint8_t(m.stop));
  const RankReport& r = m.report;
  w.put(uint8_t(r.has_work));
  for (int64_t v : {r.queued_tokens, r.held_pages, r.running, r.waiting, r.kv_pages_total,
                    r.kv_pages_used, r.kv_pages_cached, r.kv_filled_slots, r.preemptions,
                    r.prompt_tokens, r.cached_prompt_tokens, r.evicted_pages, r.computed_tokens,
                    r.steps, r.generated_tokens})
    w.put(v);
  w.put(uint64_t(m.assignments.size()));
  for (const auto& a : m.assignments) {
    w.put(int32_t(a.rank));
    w.put(a.id);
    w.put(a.request);
  }
  w.put(uint64_t(m.cancels.size()));
  for (const auto& c : m.cancels) {
    w.put(int32_t(c.rank));
    w.put(c.id);
  }
  w.put(uint64_t(m.updates.size()));
  for (const auto& u : m.updates) {
    w.put(u.id);
    w.put(u.tokens);
    w.put(uint8_t(u.end.has_value()));
    if (u.end) w.put(*u.end);
  }
  return w.take();
}

RankMessage decode(std::string_view bytes) {
  Reader rd(bytes);
  RankMessage m;
  m.stop = rd.get<uint8_t>() != 0;
  RankReport& r = m.report;
  r.has_work = rd.get<uint8_t>() != 0;
  for (int64_t* v : {&r.queued_tokens, &r.held_pages, &r.running, &r.waiting, &r.kv_pages_total,
                     &r.kv_pages_used, &r.kv_pages_cached, &r.kv_filled_slots, &r.preemptions,
                     &r.prompt_tokens, &r.cached_prompt_tokens, &r.evicted_pages,
                     &r.computed_tokens, &r.steps, &r.generated_tokens})
    *v = rd.get<int64_t>();
  m.assignments.resize(rd.count(sizeof(int32_t) + sizeof(uint64_t)));
  for (auto& a : m.assignments) {
    a.rank = rd.get<int32_t>();
    a.id = rd.get<uint64_t>();
    a.request = rd.get_request();
  }
  m.cancels.resize(rd.count(sizeof(int32_t) + sizeof(uint64_t)));
  for (auto& c : m.cancels) {
    c.rank = rd.get<int32_t>();
    c.id = rd.get<uint64_t>();
  }
  m.updates.resize(rd.count(sizeof(uint64_t)));
  for (auto& u : m.updates) {
    u.id = rd.get<uint64_t>();
    u.tokens.resize(rd.count(sizeof(int32_t) + sizeof(float)));
    for (TokenEvent& e : u.tokens) e = rd.get_event();
    if (rd.get<uint8_t>()) u.end = rd.get_end();
  }
  TRI_CHECK(rd.done(), "rank message: {} bytes past its end", bytes.size());
  return m;
}

std::vector<RankMessage> exchange_messages(Communicator& comm, const RankMessage& mine,
                                           std::string_view what) {
  const std::string bytes = encode(mine);
  const int n = comm.size();
  std::vector<uint64_t> sizes(n);
  const uint64_t size = bytes.size();
  comm.all_gather(&size, sizeof(size), sizes.data(), what);
  // all_gather moves equal blocks: each message is padded to the longest.
  const uint64_t longest = *std::max_element(sizes.begin(), sizes.end());
  std::string block = bytes;
  block.resize(longest);
  std::string all(longest * n, '\0');
  comm.all_gather(block.data(), longest, all.data(), what);
  std::vector<RankMessage> out;
  for (int r = 0; r < n; ++r)
    out.push_back(decode(std::string_view(all).substr(r * longest, sizes[r])));
  return out;
}

int least_loaded_rank(const std::vector<int64_t>& loads, const std::vector<int64_t>& given) {
  TRI_CHECK(!loads.empty() && loads.size() == given.size(),
            "least_loaded_rank: {} loads and {} request counts", loads.size(), given.size());
  int best = 0;
  for (int r = 1; r < int(loads.size()); ++r)
    if (loads[r] < loads[best] || (loads[r] == loads[best] && given[r] < given[best])) best = r;
  return best;
}

}  // namespace trident
