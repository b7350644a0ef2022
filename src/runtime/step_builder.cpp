#include "runtime/step_builder.h"

#include <algorithm>

#include "cache/kv_page_pool.h"
#include "core/error.h"

namespace trident {

StepInput build_step(const std::vector<StepChunk>& chunks) {
  constexpr int P = AttentionMeta::kPageSize;
  const int S = int(chunks.size());
  int T = 0, max_pages = 1, max_kv = 0, L = 0;
  for (const StepChunk& c : chunks) {
    TRI_CHECK(c.count > 0 && c.start >= 0 && c.start + c.count <= int(c.tokens->size()),
              "step chunk [{}, {}) outside a sequence of {} tokens", c.start, c.start + c.count,
              c.tokens->size());
    int need = pages_for_tokens(c.start + c.count, P);
    TRI_CHECK(int(c.pages->size()) >= need, "sequence of {} tokens has {} KV pages, needs {}",
              c.start + c.count, c.pages->size(), need);
    T += c.count;
    max_pages = std::max(max_pages, need);
    max_kv = std::max(max_kv, c.start + c.count);
    L += c.all_logits ? c.count : c.want_logits;
  }
  StepInput in;
  AttentionMeta& m = in.meta;
  m.n_tokens = T;
  m.n_seqs = S;
  m.max_pages_per_seq = max_pages;
  m.max_kv_len = max_kv;
  in.token_ids = cpu_tensor(DType::I32, {T});
  m.positions = cpu_tensor(DType::I32, {T});
  m.token_seq = cpu_tensor(DType::I32, {T});
  m.slot = cpu_tensor(DType::I32, {T});
  m.seq_start = cpu_tensor(DType::I32, {S + 1});
  m.seq_kv_len = cpu_tensor(DType::I32, {S});
  m.page_table = cpu_tensor(DType::I32, {S, max_pages});
  in.logit_rows = cpu_tensor(DType::I32, {L});

  int t = 0, l = 0;
  for (int s = 0; s < S; ++s) {
    const StepChunk& c = chunks[s];
    m.seq_start.ptr<int32_t>()[s] = t;
    m.seq_kv_len.ptr<int32_t>()[s] = c.start + c.count;
    for (int i = 0; i < int(c.pages->size()) && i < max_pages; ++i)
      m.page_table.ptr<int32_t>()[s * max_pages + i] = (*c.pages)[i];
    for (int i = 0; i < c.count; ++i, ++t) {
      int pos = c.start + i;
      in.token_ids.ptr<int32_t>()[t] = (*c.tokens)[pos];
      m.positions.ptr<int32_t>()[t] = pos;
      m.token_seq.ptr<int32_t>()[t] = s;
      m.slot.ptr<int32_t>()[t] = (*c.pages)[pos / P] * P + pos % P;
      if (c.all_logits) in.logit_rows.ptr<int32_t>()[l++] = t;
    }
    if (c.want_logits && !c.all_logits) in.logit_rows.ptr<int32_t>()[l++] = t - 1;
  }
  m.seq_start.ptr<int32_t>()[S] = t;
  return in;
}

StepInput upload_step(Backend& backend, const StepInput& host) {
  StepInput d = host;
  d.token_ids = backend.upload(host.token_ids);
  d.logit_rows = backend.upload(host.logit_rows);
  AttentionMeta& m = d.meta;
  m.positions = backend.upload(host.meta.positions);
  m.token_seq = backend.upload(host.meta.token_seq);
  m.slot = backend.upload(host.meta.slot);
  m.seq_start = backend.upload(host.meta.seq_start);
  m.seq_kv_len = backend.upload(host.meta.seq_kv_len);
  m.page_table = backend.upload(host.meta.page_table);
  return d;
}

}  // namespace trident
