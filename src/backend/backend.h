// The op interface the model is written against. The CPU backend (backend/cpu) is the reference
// every other backend is checked against; a backend owns its memory and decides its activation
// precision (f32 on the CPU, bf16 on GPUs).
//
// Conventions: tensors are contiguous and row-major; T = tokens in the step, H = attention heads,
// E = routed experts, k = experts per token. Outputs are written, never accumulated, unless the
// op's name says otherwise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/tensor.h"

namespace trident {

// A linear layer's weight [out, in]: BF16/F16/F32, or FP8 e4m3 with one f32 scale per 128x128
// block (`scale_inv`, [ceil(out/128), ceil(in/128)]; DeepSeek's name: dequantized = fp8 * scale).
struct LinearWeight {
  static constexpr int64_t kBlock = 128;
  Tensor weight;
  Tensor scale_inv;

  bool fp8() const { return weight.dtype == DType::F8E4M3; }
  int64_t out_features() const { return weight.dim(0); }
  int64_t in_features() const { return weight.dim(1); }
};

// Rotary embedding (plain or YaRN): pair (2i, 2i+1) of the rope part of a vector at position p
// rotates by angle float(p) * inv_freq[i], and both cos and sin are scaled by attention_factor
// (YaRN's mscale ratio). Angles are made in f32 from f32 frequencies, as HF does.
struct RopeTable {
  Tensor inv_freq;  // [rope_dim / 2] f32
  float attention_factor = 1.0f;
};

// Where each token of a step sits in the paged latent cache. Host copies drive the CPU backend and
// the scheduler; device copies (same content) drive GPU kernels.
struct AttentionMeta {
  static constexpr int kPageSize = 64;  // tokens per KV page, as FlashMLA uses
  int n_tokens = 0;
  int n_seqs = 0;
  int max_pages_per_seq = 0;
  int max_kv_len = 0;
  Tensor positions;    // [T] i32: position of each new token in its sequence
  Tensor token_seq;    // [T] i32: index of the sequence each token belongs to
  Tensor seq_start;    // [S + 1] i32: first token of each sequence in the step
  Tensor seq_kv_len;   // [S] i32: context length of each sequence after this step
  Tensor slot;         // [T] i32: page * 64 + offset where each token's latent is written
  Tensor page_table;   // [S, max_pages_per_seq] i32: page ids of each sequence, in order
};

// One layer's latent cache: [n_pages, 64, kv_lora_rank + rope_dim], the normalized compressed KV
// followed by the rotated shared rope key.
struct KvLayer {
  Tensor pages;
};

struct MlaParams {
  int n_heads = 0;
  int qk_nope_dim = 0;
  int qk_rope_dim = 0;
  int v_dim = 0;
  int kv_lora_rank = 0;
  float softmax_scale = 0;
  float kv_norm_eps = 0;
};

// kv_b_proj split per head for the absorbed form, dequantized: w_uk [H, nope, kv_lora] maps the
// latent to keys, w_uv [H, v, kv_lora] to values. `kv_b` keeps the layer as stored.
struct MlaWeights {
  Tensor kv_a_norm;  // [kv_lora_rank]
  Tensor w_uk;
  Tensor w_uv;
  LinearWeight kv_b;
};

enum class ScoringFunc : uint8_t { Sigmoid, Softmax };
enum class TopkMethod : uint8_t { NoauxTc, Greedy, GroupLimitedGreedy };

struct GateParams {
  int n_experts = 0;
  int top_k = 0;
  int n_group = 1;
  int topk_group = 1;
  ScoringFunc scoring = ScoringFunc::Sigmoid;
  TopkMethod method = TopkMethod::NoauxTc;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// Routed experts held by this rank, indexed by local slot; `global_to_local[e]` is the slot of
// global expert e or -1 when another rank holds it.
struct ExpertWeights {
  std::vector<LinearWeight> gate, up, down;
  std::vector<int32_t> global_to_local;
};

// Memory a backend takes from its device for the process (GPUs); the CPU backend has none to plan.
struct DeviceMemory {
  int64_t reserved = 0;     // bytes taken from the device, at start, for every tensor of the run
  int64_t in_use = 0;       // bytes held by live tensors
  int64_t peak_in_use = 0;  // most bytes held at once since reset_memory_peak()
};

// One row's sampling parameters, as the host sampler's (runtime/sampler.h), and the draws its
// sequence made before (the position in its random stream).
struct SampleRow {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
  int64_t step = 0;
};

// Ops recorded once and replayed as one launch, on the tensors they were recorded with (a CUDA
// graph). Whoever replays writes the inputs into those tensors first and reads the outputs after.
class Graph {
 public:
  virtual ~Graph() = default;
  virtual void replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual DType activation_dtype() const = 0;

  // Memory: `alloc` gives a workspace tensor on the device; `upload` makes a host tensor (e.g. a
  // mapped checkpoint tensor) usable by the ops, copying only when the device needs it.
  virtual Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) = 0;
  virtual Tensor upload(const Tensor& host) = 0;
  virtual void to_host(const Tensor& src, void* dst) = 0;
  // Copies dst.nbytes() bytes from host memory into an existing tensor, in order with the ops.
  virtual void from_host(const void* src, Tensor& dst) = 0;
  virtual void synchronize() = 0;
  // The device memory plan's figures, or nullopt where the backend plans none (CPU).
  virtual std::optional<DeviceMemory> device_memory() { return std::nullopt; }
  virtual void reset_memory_peak() {}

  // Graphs, where the backend has them (CUDA). `reserve_graph_workspace` sets aside the memory
  // every tensor allocated during a capture comes from (ops of a graph must find their
  // workspace at the same addresses on every replay); `capture_graph` records what `ops`
  // issues, without running it. Tensors made during the capture stay valid, as the graph's
  // inputs and outputs, while the caller holds them. Where supports_graphs() is false, both
  // throw.
  virtual bool supports_graphs() const { return false; }
  // Sampling on the device, where the backend has it (CUDA): one token per row of logits [B, V]
  // into ids [B] i32, each row by its parameters, drawn from a random stream keyed by (seed,
  // step), so only the ids come back to the host. Elsewhere the host samples (runtime/sampler.h)
  // and `sample` throws.
  virtual bool samples_on_device() const { return false; }
  virtual void sample(const Tensor& logits, std::span<const SampleRow> rows, Tensor& ids) = 0;
  virtual void reserve_graph_workspace(int64_t bytes) = 0;
  virtual std::unique_ptr<Graph> capture_graph(const std::function<void()>& ops) = 0;

  // out[t] = table[ids[t]]
  virtual void embedding(const Tensor& ids, const Tensor& table, Tensor& out) = 0;
  // out = x / rms(x) * w, per row
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // residual += x, then out = rms_norm(residual)
  virtual void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps,
                            Tensor& out) = 0;
  // out = x W^T; FP8 weights quantize x per token per 128 channels first, as DeepSeek does.
  // out may be f32 or the activation dtype.
  virtual void linear(const Tensor& x, const LinearWeight& w, Tensor& out) = 0;
  // out = silu(gate) * up
  virtual void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // a += b
  virtual void add(Tensor& a, const Tensor& b) = 0;

  // MLA attention preparation: q [T, H, nope + rope] has its rope part rotated in place;
  // kv [T, kv_lora + rope] (kv_a_proj output) is normalized (latent part) and rotated (rope part)
  // and written to the cache at meta.slot.
  virtual void mla_rope_cache_write(Tensor& q, const Tensor& kv, const MlaWeights& w,
                                    const MlaParams& p, const RopeTable& rope,
                                    const AttentionMeta& meta, KvLayer& cache) = 0;
  // Causal attention of each new token over its sequence's cache (positions 0..pos), out
  // [T, H * v_dim].
  virtual void mla_attention(const Tensor& q, const MlaWeights& w, const MlaParams& p,
                             const AttentionMeta& meta, const KvLayer& cache, Tensor& out) = 0;

  // Router: logits [T, E] f32 -> topk_ids [T, k] i32 (global expert ids), topk_weights [T, k] f32
  // (final weights, scaling factor applied).
  virtual void moe_gate(const Tensor& logits, const Tensor& bias, const GateParams& p,
                        Tensor& topk_ids, Tensor& topk_weights) = 0;
  // out[t] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]) over the experts held here.
  virtual void moe_experts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                           const ExpertWeights& experts, Tensor& out) = 0;
  // Expert load: counts [E] i64 += how many of topk_ids (i32, any shape) name each expert; ids
  // outside [0, E) are not counted. Accumulates in place without waiting for the device, so it
  // may run inside a graph.
  virtual void add_expert_counts(const Tensor& topk_ids, Tensor& counts) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace trident
