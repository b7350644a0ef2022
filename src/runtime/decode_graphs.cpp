#include "runtime/decode_graphs.h"

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "cache/kv_page_pool.h"
#include "core/error.h"

namespace trident {

namespace {

constexpr int kPage = AttentionMeta::kPageSize;

Tensor view(const Tensor& packed, int64_t offset, int64_t count) {
  return packed.rows(offset, offset + count);
}

}  // namespace

DecodeStepLayout::DecodeStepLayout(int batch, int max_context)
    : batch(batch), page_width(pages_for_tokens(max_context, kPage)), max_context(max_context) {
  TRI_CHECK(batch > 0 && max_context > 0, "decode step layout: batch {} and max context {}",
            batch, max_context);
}

bool is_decode_step(const StepInput& host) {
  const AttentionMeta& m = host.meta;
  if (m.n_tokens == 0 || m.n_tokens != m.n_seqs || host.logit_rows.numel() != m.n_seqs)
    return false;
  const int32_t* rows = host.logit_rows.ptr<int32_t>();
  for (int i = 0; i < m.n_seqs; ++i)
    if (rows[i] != i) return false;
  return true;
}

void pack_decode_step(const StepInput* host, const DecodeStepLayout& layout, int scratch_page,
                      int32_t* out) {
  const int B = layout.batch, W = layout.page_width;
  const int n = host ? host->meta.n_seqs : 0;
  TRI_CHECK(n <= B, "a decode step of {} sequences does not fit a graph of {}", n, B);
  std::fill(out, out + layout.size(), 0);
  int32_t* pages = out + layout.page_table();
  if (host) {
    const AttentionMeta& m = host->meta;
    TRI_CHECK(m.max_kv_len <= layout.max_context,
              "a decode step with a {}-token context does not fit a graph of {} tokens",
              m.max_kv_len, layout.max_context);
    const int host_width = m.max_pages_per_seq;
    for (int i = 0; i < n; ++i) {
      out[layout.token_ids() + i] = host->token_ids.ptr<int32_t>()[i];
      out[layout.positions() + i] = m.positions.ptr<int32_t>()[i];
      out[layout.slot() + i] = m.slot.ptr<int32_t>()[i];
      out[layout.seq_kv_len() + i] = m.seq_kv_len.ptr<int32_t>()[i];
      const int32_t* row = m.page_table.ptr<int32_t>() + int64_t(i) * host_width;
      const int used = pages_for_tokens(m.seq_kv_len.ptr<int32_t>()[i], kPage);
      std::copy(row, row + used, pages + int64_t(i) * W);
      std::fill(pages + int64_t(i) * W + used, pages + int64_t(i + 1) * W, scratch_page);
    }
  }
  for (int i = n; i < B; ++i) {
    // A one-token sequence at position 0 in the scratch page: it attends to itself only.
    out[layout.slot() + i] = scratch_page * kPage;
    out[layout.seq_kv_len() + i] = 1;
    std::fill(pages + int64_t(i) * W, pages + int64_t(i + 1) * W, scratch_page);
  }
  for (int i = 0; i < B; ++i) {
    out[layout.token_seq() + i] = i;
    out[layout.logit_rows() + i] = i;
    out[layout.seq_start() + i] = i;
  }
  out[layout.seq_start() + B] = B;
}

StepInput decode_step_views(const Tensor& packed, const DecodeStepLayout& layout) {
  TRI_CHECK(packed.dtype == DType::I32 && packed.ndim == 1 && packed.numel() == layout.size(),
            "decode step buffer {} {} is not {} i32 values", dtype_name(packed.dtype),
            packed.shape_str(), layout.size());
  const int B = layout.batch;
  StepInput s;
  s.token_ids = view(packed, layout.token_ids(), B);
  s.logit_rows = view(packed, layout.logit_rows(), B);
  AttentionMeta& m = s.meta;
  m.n_tokens = B;
  m.n_seqs = B;
  m.max_pages_per_seq = layout.page_width;
  m.max_kv_len = layout.max_context;
  m.positions = view(packed, layout.positions(), B);
  m.token_seq = view(packed, layout.token_seq(), B);
  m.slot = view(packed, layout.slot(), B);
  m.seq_start = view(packed, layout.seq_start(), B + 1);
  m.seq_kv_len = view(packed, layout.seq_kv_len(), B);
  m.page_table = view(packed, layout.page_table(), int64_t(B) * layout.page_width)
                     .reshape({B, layout.page_width});
  return s;
}

std::vector<int> decode_graph_buckets(int max_batch) {
  std::vector<int> out;
  for (int b = 1; b < max_batch;) {
    out.push_back(b);
    b = b < 8 ? b * 2 : b < 64 ? b + 8 : b < 128 ? b + 16 : b + 32;
  }
  if (max_batch > 0) out.push_back(max_batch);
  return out;
}

int64_t measure_decode_graph_workspace(DeepseekV3& model, int max_batch, int max_context) {
  Backend& backend = model.backend();
  const DecodeStepLayout layout(max_batch, max_context);
  KvCache trial = make_kv_cache(backend, model.config(), 1);
  Tensor host = cpu_tensor(DType::I32, {layout.size()});
  pack_decode_step(nullptr, layout, 0, host.ptr<int32_t>());
  Tensor packed = backend.upload(host);
  const DeviceMemory before = *backend.device_memory();
  backend.reset_memory_peak();
  {
    Tensor logits = model.forward(decode_step_views(packed, layout), trial);
    backend.synchronize();
  }
  const DeviceMemory after = *backend.device_memory();
  const int64_t peak = after.peak_in_use - before.in_use;
  // First fit in capture order carves a little less tightly than the pool reuses memory; the
  // capture fails, naming the sizes, if this is ever not enough.
  return peak + peak / 4 + (int64_t(16) << 20);
}

DecodeGraphs::DecodeGraphs(DeepseekV3& model, KvCache& cache, const DecodeGraphOptions& options)
    : model_(model), options_(options), batches_(decode_graph_buckets(options.max_batch)) {
  TRI_CHECK(options.scratch_page >= 0 && options.scratch_page < cache.n_pages,
            "decode graphs: scratch page {} is not a page of the {}-page cache",
            options.scratch_page, cache.n_pages);
  Backend& backend = model.backend();
  const auto t0 = std::chrono::steady_clock::now();
  for (int batch : batches_) {
    Bucket b{DecodeStepLayout(batch, options.max_context), {}, {}, nullptr, {}};
    staging_.resize(b.layout.size());
    pack_decode_step(nullptr, b.layout, options.scratch_page, staging_.data());
    b.packed = backend.alloc(DType::I32, {b.layout.size()});
    backend.from_host(staging_.data(), b.packed);
    b.step = decode_step_views(b.packed, b.layout);
    model.forward(b.step, cache);  // warm-up
    b.graph = backend.capture_graph([&] { b.logits = model.forward(b.step, cache); });
    buckets_.push_back(std::move(b));
  }
  backend.synchronize();
  spdlog::info("captured {} decode graphs (batch {} to {}, contexts up to {} tokens) in {:.2f} s",
               batches_.size(), batches_.front(), batches_.back(), options.max_context,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

Tensor DecodeGraphs::run(const StepInput& host) {
  if (!is_decode_step(host) || host.meta.max_kv_len > options_.max_context) return {};
  const int n = host.meta.n_seqs;
  auto it = std::find_if(buckets_.begin(), buckets_.end(),
                         [&](const Bucket& b) { return b.layout.batch >= n; });
  if (it == buckets_.end()) return {};
  pack_decode_step(&host, it->layout, options_.scratch_page, staging_.data());
  model_.backend().from_host(staging_.data(), it->packed);
  it->graph->replay();
  ++replays_;
  return it->logits.rows(0, n);
}

}  // namespace trident
