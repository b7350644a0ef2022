// Decode steps as CUDA graphs, one per batch-size bucket. A decode step launches the same
// kernels with the same grids whatever the batch holds, once its shape is fixed: the batch
// padded up to its bucket, the page table as wide as the longest context allowed, and the MLA
// context split chosen for that longest context (each token splits its own context; splits past
// it are empty). Launching a whole step as one graph removes the host's launch overhead, which
// at small batches is most of a decode step.
//
// Padding rows decode token 0 at position 0 into a scratch page no sequence owns, so they write
// nothing anyone reads; their logits are dropped.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/deepseek_v3.h"
#include "model/step.h"

namespace trident {

// Where each array of a padded decode step sits in one i32 buffer, so one copy moves the step.
struct DecodeStepLayout {
  int batch = 0;       // sequences (one token each), padding included
  int page_width = 0;  // page-table entries per sequence
  int max_context = 0;

  DecodeStepLayout(int batch, int max_context);
  int64_t token_ids() const { return 0; }
  int64_t positions() const { return batch; }
  int64_t token_seq() const { return 2 * int64_t(batch); }
  int64_t slot() const { return 3 * int64_t(batch); }
  int64_t seq_kv_len() const { return 4 * int64_t(batch); }
  int64_t logit_rows() const { return 5 * int64_t(batch); }
  int64_t seq_start() const { return 6 * int64_t(batch); }  // batch + 1 entries
  int64_t page_table() const { return 7 * int64_t(batch) + 1; }
  int64_t size() const { return page_table() + int64_t(batch) * page_width; }
};

// True when `host` (from build_step) is a decode step: one token per sequence, logits for each.
bool is_decode_step(const StepInput& host);

// Writes the decode step `host` (nullptr: padding only) padded to layout.batch into `out`
// (layout.size() values); padding rows use `scratch_page`.
void pack_decode_step(const StepInput* host, const DecodeStepLayout& layout, int scratch_page,
                      int32_t* out);
// The step a packed buffer holds, as views of `packed` (host or device).
StepInput decode_step_views(const Tensor& packed, const DecodeStepLayout& layout);

// The batch buckets up to max_batch: 1, 2, 4, 8, then every 8 to 64, every 16 to 128, every 32
// beyond, and max_batch itself.
std::vector<int> decode_graph_buckets(int max_batch);

struct DecodeGraphOptions {
  int max_batch = 0;
  int max_context = 0;    // the longest context (prompt and generated) a graph's step attends
  int scratch_page = -1;  // a page of the cache no sequence owns
};

// The device workspace the graph of a max_batch step takes: one eager step of that shape on a
// trial one-page cache, its peak memory measured, plus slack for the capture's first-fit carving.
int64_t measure_decode_graph_workspace(DeepseekV3& model, int max_batch, int max_context);

class DecodeGraphs {
 public:
  // Captures one graph per bucket (each after one eager warm-up step of its shape, which loads
  // its kernels and builds what the ops cache) from the backend's graph workspace.
  DecodeGraphs(DeepseekV3& model, KvCache& cache, const DecodeGraphOptions& options);

  // Logits [n_seqs, vocab] f32 of the decode step `host` (build_step's host tensors) from the
  // graph of the smallest bucket that holds it, valid until the next step; an undefined tensor
  // when no graph takes the step (not a decode step, more sequences than the largest bucket, a
  // context longer than max_context).
  Tensor run(const StepInput& host);

  const std::vector<int>& buckets() const { return batches_; }
  int64_t replays() const { return replays_; }

 private:
  struct Bucket {
    DecodeStepLayout layout;
    Tensor packed;  // the step's inputs on the device
    StepInput step;
    std::unique_ptr<Graph> graph;
    Tensor logits;  // [batch, vocab] f32, the graph's output
  };

  DeepseekV3& model_;
  DecodeGraphOptions options_;
  std::vector<int> batches_;
  std::vector<Bucket> buckets_;
  std::vector<int32_t> staging_;
  int64_t replays_ = 0;
};

}  // namespace trident
