// Reference ops on the CPU: plain loops, f32 accumulation, OpenMP across rows. These are the
// oracle every other backend is tested against, so they favour clarity over speed. Inputs may be
// F32 or BF16 (weights also F16 and FP8); outputs F32 or BF16.
#pragma once

#include <vector>

#include "backend/backend.h"

namespace trident::cpu {

// Row r of a 2-D view of t (all dims after the first flattened), converted to f32.
void read_row(const Tensor& t, int64_t r, float* dst);
void write_row(Tensor& t, int64_t r, const float* src);

// DeepSeek's per-token-group activation quantization of one row: for each group of 128 channels
// (the last may be shorter), scale = max(|x|, 1e-10) / 448 and q = e4m3(x / scale). q holds the
// dequantized e4m3 values' codes' f32 values (q * scale restores x to FP8 precision).
void quantize_row_fp8(const float* x, int64_t n, float* q, float* scales);

void embedding(const Tensor& ids, const Tensor& table, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out);
void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out);
void linear(const Tensor& x, const LinearWeight& w, Tensor& out);
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);
void add(Tensor& a, const Tensor& b);
void mla_rope_cache_write(Tensor& q, const Tensor& kv, const MlaWeights& w, const MlaParams& p,
                          const RopeTable& rope, const AttentionMeta& meta, KvLayer& cache);
void mla_attention(const Tensor& q, const MlaWeights& w, const MlaParams& p,
                   const AttentionMeta& meta, const KvLayer& cache, Tensor& out);
void moe_gate(const Tensor& logits, const Tensor& bias, const GateParams& p, Tensor& topk_ids,
              Tensor& topk_weights);
void moe_experts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                 const ExpertWeights& experts, Tensor& out);
void add_expert_counts(const Tensor& topk_ids, Tensor& counts);

}  // namespace trident::cpu
