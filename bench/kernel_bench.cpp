// Times Trident's CUDA kernels through the library's own launcher, one case per input line, and
// prints one JSON object per timing. Driven by bench/bench_kernels.py, which times the peers
// (torch's block-scaled scaled_mm, cuBLAS bf16) in the same run.
//
//   trident_kernel_bench < cases      each line one of:
//     fp8_gemm  M N K [tile|auto|all] [split]   (pre-quantized activations, bf16 out)
//     bf16_gemm M N K [tile|auto|all] [split]
//     act_quant M K
//     rms_norm  M N residual(0|1)
//     mla_decode B context heads [variant|auto] [splits]   (B sequences decoding one token each
//                over `context` cached positions; DeepSeek-V3's latent: kv_lora 512, rope 64,
//                nope 128, v 128)
//     moe_gate_up E M H I [kernel/variant|auto|all]   (grouped FP8 expert GEMM over E experts
//     moe_down    E M H I [kernel/variant|auto|all]    of M rows each: gate/up with SiLU-mul and
//                the quantization fused, or down)
//     moe_experts T E top_k H I [random|uniform] [gate_up|auto] [down|auto]   (the whole FP8
//                op: route, permute, both GEMMs, combine; T tokens routed over E experts at
//                random, or evenly: slot j of token t to expert (t * top_k + j) % E)
//
// Inputs are random (never zeros), rotated over enough copies to exceed the L2 cache, and each
// case reports the median of per-launch CUDA-event times after warm-up.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

using namespace trident;
using namespace trident::cuda;

namespace {

constexpr size_t kRotateBytes = size_t(512) << 20;  // several times H200's 60 MB L2
constexpr int kMaxCopies = 16;
constexpr double kMinSeconds = 0.03;

uint64_t g_state = 0x9e3779b97f4a7c15ull;
uint64_t next_random() {
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return g_state;
}

// Host tensor of random values: bf16 in [-1, 1), e4m3 codes without NaN, f32 scales in
// [0.5, 1) / 448.
Tensor random_host(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t = cpu_tensor(dtype, shape);
  const int64_t n = t.numel();
  if (dtype == DType::BF16) {
    auto* p = t.ptr<uint16_t>();
    for (int64_t i = 0; i < n; ++i)
      p[i] = f32_to_bf16(float(int64_t(next_random() % 2000001) - 1000000) * 1e-6f);
  } else if (dtype == DType::F8E4M3) {
    auto* p = t.ptr<uint8_t>();
    for (int64_t i = 0; i < n; ++i) {
      uint8_t b = uint8_t(next_random());
      p[i] = (b & 0x7f) == 0x7f ? uint8_t(b ^ 1) : b;
    }
  } else if (dtype == DType::F32) {
    auto* p = t.ptr<float>();
    for (int64_t i = 0; i < n; ++i)
      p[i] = (0.5f + float(next_random() % 1000) / 2000.0f) / kFp8E4M3Max;
  }
  return t;
}

struct Timing {
  double median_us, min_us;
};

// Runs fn(copy) over the copies in turn: warm-up, then one event pair per launch.
template <class Fn>
Timing time_launches(CudaBackend& backend, int copies, Fn fn) {
  const DriverApi& api = cu();
  CUstream stream = backend.context().stream();
  for (int i = 0; i < 3; ++i) fn(i % copies);
  backend.synchronize();
  CUevent start{}, stop{};
  check(api.cuEventCreate(&start, CU_EVENT_DEFAULT), "creating an event");
  check(api.cuEventCreate(&stop, CU_EVENT_DEFAULT), "creating an event");
  check(api.cuEventRecord(start, stream), "recording an event");
  fn(0);
  check(api.cuEventRecord(stop, stream), "recording an event");
  check(api.cuEventSynchronize(stop), "waiting for an event");
  float first_ms = 0;
  check(api.cuEventElapsedTime(&first_ms, start, stop), "reading an event");
  const int iters = std::clamp(int(kMinSeconds * 1e3 / std::max(first_ms, 1e-3f)), 10, 300);
  std::vector<CUevent> events(2 * iters);
  for (auto& e : events) check(api.cuEventCreate(&e, CU_EVENT_DEFAULT), "creating an event");
  for (int i = 0; i < iters; ++i) {
    check(api.cuEventRecord(events[2 * i], stream), "recording an event");
    fn(i % copies);
    check(api.cuEventRecord(events[2 * i + 1], stream), "recording an event");
  }
  backend.synchronize();
  std::vector<double> us(iters);
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    check(api.cuEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]), "reading an event");
    us[i] = ms * 1e3;
  }
  for (auto& e : events) api.cuEventDestroy(e);
  api.cuEventDestroy(start);
  api.cuEventDestroy(stop);
  std::sort(us.begin(), us.end());
  return {us[iters / 2], us[0]};
}

int copies_for(size_t bytes_per_copy) {
  return int(std::clamp<size_t>(kRotateBytes / std::max<size_t>(bytes_per_copy, 1), 1, kMaxCopies));
}

// Aligned tiles of a GEMM kernel (bf16-output variants), for sweeps.
std::vector<std::string> all_tiles(const std::string& kernel, int arch) {
  std::vector<std::string> tiles;
  for (const KernelVariant& v : compiled_kernel_variants()) {
    std::string name = v.name;
    if (v.arch == arch && kernel == v.kernel && v.tag("EVEN_K") == 1 && name.ends_with("_bf16"))
      tiles.push_back(name.substr(0, name.size() - 5));
  }
  return tiles;
}

void bench_gemm(CudaBackend& backend, const std::string& op, int64_t M, int64_t N, int64_t K,
                const std::string& tile_arg, int split) {
  const bool fp8 = op == "fp8_gemm";
  const int64_t kb = (K + 127) / 128, nb = (N + 127) / 128;
  const size_t weight_bytes = size_t(N * K) * (fp8 ? 1 : 2);
  const size_t act_bytes = size_t(M * K) * (fp8 ? 1 : 2);
  const int copies = copies_for(weight_bytes + act_bytes);
  // One random draw, uploaded to every copy: the copies differ in address, which is what
  // defeats the cache.
  const DType in_dtype = fp8 ? DType::F8E4M3 : DType::BF16;
  const Tensor a_host = random_host(in_dtype, {M, K}), w_host = random_host(in_dtype, {N, K});
  const Tensor a_scale_host = random_host(DType::F32, {M, kb});
  const Tensor w_scale_host = random_host(DType::F32, {nb, kb});
  std::vector<Tensor> a, a_scale, w, w_scale, out;
  for (int c = 0; c < copies; ++c) {
    a.push_back(backend.upload(a_host));
    w.push_back(backend.upload(w_host));
    if (fp8) {
      a_scale.push_back(backend.upload(a_scale_host));
      w_scale.push_back(backend.upload(w_scale_host));
    }
    out.push_back(backend.alloc(DType::BF16, {M, N}));
  }
  std::vector<std::string> tiles;
  if (tile_arg == "all")
    tiles = all_tiles(op, backend.context().arch());
  else
    tiles.push_back(tile_arg == "auto" ? "" : tile_arg);
  for (const std::string& tile : tiles) {
    if (tile.empty() && split == 0)
      backend.set_gemm_override(std::nullopt);
    else
      backend.set_gemm_override(GemmChoice{tile, split});
    auto run = [&](int c) {
      if (fp8) {
        backend.fp8_gemm(a[c], a_scale[c], LinearWeight{w[c], w_scale[c]}, out[c]);
      } else {
        backend.linear(a[c], LinearWeight{w[c], {}}, out[c]);
      }
    };
    const Timing t = time_launches(backend, copies, run);
    const GemmChoice used = backend.last_gemm();
    const double flops = 2.0 * double(M) * double(N) * double(K);
    const double bytes = double(weight_bytes + act_bytes) + double(M * N) * 2 +
                         (fp8 ? double(M * kb + nb * kb) * 4 : 0);
    std::printf(
        "{\"op\": \"%s\", \"M\": %ld, \"N\": %ld, \"K\": %ld, \"tile\": \"%s\", \"split\": %d, "
        "\"us\": %.3f, \"us_min\": %.3f, \"tflops\": %.1f, \"gbps\": %.1f, \"copies\": %d}\n",
        op.c_str(), long(M), long(N), long(K), used.tile.c_str(), used.split_k, t.median_us,
        t.min_us, flops / t.median_us * 1e-6, bytes / t.median_us * 1e-3, copies);
    std::fflush(stdout);
  }
  backend.set_gemm_override(std::nullopt);
}

void bench_act_quant(CudaBackend& backend, int64_t M, int64_t K) {
  const int64_t kb = (K + 127) / 128;
  const int copies = copies_for(size_t(M * K) * 3);
  std::vector<Tensor> x, q, s;
  const Tensor x_host = random_host(DType::BF16, {M, K});
  for (int c = 0; c < copies; ++c) {
    x.push_back(backend.upload(x_host));
    q.push_back(backend.alloc(DType::F8E4M3, {M, K}));
    s.push_back(backend.alloc(DType::F32, {M, kb}));
  }
  const Timing t =
      time_launches(backend, copies, [&](int c) { backend.quantize_fp8(x[c], q[c], s[c]); });
  const double bytes = double(M * K) * 3 + double(M * kb) * 4;
  std::printf(
      "{\"op\": \"act_quant\", \"M\": %ld, \"K\": %ld, \"us\": %.3f, \"us_min\": %.3f, "
      "\"gbps\": %.1f, \"bytes\": %.0f, \"copies\": %d}\n",
      long(M), long(K), t.median_us, t.min_us, bytes / t.median_us * 1e-3, bytes, copies);
  std::fflush(stdout);
}

void bench_rms_norm(CudaBackend& backend, int64_t M, int64_t N, bool residual) {
  const int copies = copies_for(size_t(M * N) * (residual ? 8 : 4));
  std::vector<Tensor> x, r, out;
  Tensor w = backend.upload(random_host(DType::BF16, {N}));
  const Tensor x_host = random_host(DType::BF16, {M, N}), r_host = random_host(DType::BF16, {M, N});
  for (int c = 0; c < copies; ++c) {
    x.push_back(backend.upload(x_host));
    r.push_back(backend.upload(r_host));
    out.push_back(backend.alloc(DType::BF16, {M, N}));
  }
  const Timing t = time_launches(backend, copies, [&](int c) {
    if (residual)
      backend.add_rms_norm(x[c], r[c], w, 1e-6f, out[c]);
    else
      backend.rms_norm(x[c], w, 1e-6f, out[c]);
  });
  // Read x (and the residual), write out (and the residual).
  const double bytes = double(M * N) * 2 * (residual ? 4 : 2);
  std::printf(
      "{\"op\": \"%s\", \"M\": %ld, \"N\": %ld, \"us\": %.3f, \"us_min\": %.3f, "
      "\"gbps\": %.1f, \"bytes\": %.0f, \"copies\": %d}\n",
      residual ? "add_rms_norm" : "rms_norm", long(M), long(N), t.median_us, t.min_us,
      bytes / t.median_us * 1e-3, bytes, copies);
  std::fflush(stdout);
}

// One decode step of B sequences, each `context` positions long, through the whole op
// (queries into the latent, attention with its context split, combine, latent out to values).
// Pages are scattered at random over the pool, as a long-running server leaves them.
void bench_mla_decode(CudaBackend& backend, int64_t B, int64_t context, int heads,
                      const std::string& variant, int splits) {
  constexpr int64_t P = AttentionMeta::kPageSize;
  const MlaParams p{heads, 128, 64, 128, 512, 0.1f, 1e-6f};
  const int64_t row = p.kv_lora_rank + p.qk_rope_dim, qk = p.qk_nope_dim + p.qk_rope_dim;
  const int64_t pages_per_seq = (context + P - 1) / P, n_pages = B * pages_per_seq;
  const size_t cache_bytes = size_t(n_pages * P * row) * 2;
  const size_t weight_bytes = size_t(2 * heads * 128 * p.kv_lora_rank) * 2;
  const size_t act_bytes = size_t(B * heads * (qk + p.v_dim)) * 2;
  const int copies = copies_for(cache_bytes + weight_bytes + act_bytes);

  // The cache rows are drawn from a block of random rows by the embedding gather (contents
  // repeat; addresses do not).
  const int64_t n_rows = n_pages * P, block_rows = std::min<int64_t>(n_rows, 8192);
  const Tensor block = backend.upload(random_host(DType::BF16, {block_rows, row}));
  Tensor row_ids_host = cpu_tensor(DType::I32, {n_rows});
  for (int64_t r = 0; r < n_rows; ++r)
    row_ids_host.ptr<int32_t>()[r] = int32_t(next_random() % uint64_t(block_rows));
  const Tensor row_ids = backend.upload(row_ids_host);
  const Tensor q_host = random_host(DType::BF16, {B, heads * qk});
  const Tensor uk_host = random_host(DType::BF16, {heads, 128, p.kv_lora_rank});
  const Tensor uv_host = random_host(DType::BF16, {heads, 128, p.kv_lora_rank});
  std::vector<int32_t> order(static_cast<size_t>(n_pages));
  for (int64_t i = 0; i < n_pages; ++i) order[size_t(i)] = int32_t(i);

  struct Copy {
    Tensor q, out;
    MlaWeights w;
    KvLayer cache;
    AttentionMeta meta;
  };
  std::vector<Copy> sets;
  for (int c = 0; c < copies; ++c) {
    Copy s;
    s.q = backend.upload(q_host);
    s.out = backend.alloc(DType::BF16, {B, heads * p.v_dim});
    s.w.w_uk = backend.upload(uk_host);
    s.w.w_uv = backend.upload(uv_host);
    s.cache.pages = backend.alloc(DType::BF16, {n_pages, P, row});
    Tensor rows = s.cache.pages.reshape({n_rows, row});
    backend.embedding(row_ids, block, rows);
    for (int64_t i = n_pages - 1; i > 0; --i)
      std::swap(order[size_t(i)], order[size_t(next_random() % uint64_t(i + 1))]);
    Tensor positions = cpu_tensor(DType::I32, {B}), token_seq = cpu_tensor(DType::I32, {B});
    Tensor table = cpu_tensor(DType::I32, {B, pages_per_seq});
    for (int64_t b = 0; b < B; ++b) {
      positions.ptr<int32_t>()[b] = int32_t(context - 1);
      token_seq.ptr<int32_t>()[b] = int32_t(b);
    }
    std::copy(order.begin(), order.end(), table.ptr<int32_t>());
    s.meta.n_tokens = int(B);
    s.meta.n_seqs = int(B);
    s.meta.max_pages_per_seq = int(pages_per_seq);
    s.meta.max_kv_len = int(context);
    s.meta.positions = backend.upload(positions);
    s.meta.token_seq = backend.upload(token_seq);
    s.meta.page_table = backend.upload(table);
    sets.push_back(std::move(s));
  }
  backend.set_mla_override(variant == "auto" && splits == 0
                               ? std::nullopt
                               : std::optional<MlaChoice>(
                                     MlaChoice{variant == "auto" ? "" : variant, splits}));
  const Timing t = time_launches(backend, copies, [&](int c) {
    backend.mla_attention(sets[c].q, sets[c].w, p, sets[c].meta, sets[c].cache, sets[c].out);
  });
  const MlaChoice used = backend.last_mla();
  backend.set_mla_override(std::nullopt);
  // What the op must move: the context's latent rows, both absorbed weights, q in and out out.
  const double bytes = double(B * context * row) * 2 + double(weight_bytes) + double(act_bytes);
  const double flops = 2.0 * double(B) * heads *
                       (double(context) * double(row + p.kv_lora_rank) +
                        2.0 * 128 * double(p.kv_lora_rank));
  std::printf(
      "{\"op\": \"mla_decode\", \"B\": %ld, \"context\": %ld, \"heads\": %d, "
      "\"variant\": \"%s\", \"splits\": %d, \"us\": %.3f, \"us_min\": %.3f, "
      "\"bytes\": %.0f, \"flops\": %.0f, \"gbps\": %.1f, \"tflops\": %.1f, "
      "\"copies\": %d}\n",
      long(B), long(context), heads, used.variant.c_str(), used.splits, t.median_us, t.min_us,
      bytes, flops, bytes / t.median_us * 1e-3, flops / t.median_us * 1e-6, copies);
  std::fflush(stdout);
}


// FP8 experts at DeepSeek's block scales: one random draw uploaded E times (distinct addresses,
// so nothing is served from L2 that a real step would read from memory). The last set is kept
// for the next case of the same shape.
const ExpertWeights& bench_experts(CudaBackend& backend, int E, int64_t H, int64_t I) {
  static std::unique_ptr<ExpertWeights> kept;
  static int64_t kept_shape[3] = {0, 0, 0};
  if (kept && kept_shape[0] == E && kept_shape[1] == H && kept_shape[2] == I) return *kept;
  kept.reset();
  kept = std::make_unique<ExpertWeights>();
  const int64_t ib = (I + 127) / 128, hb = (H + 127) / 128;
  const Tensor gate = random_host(DType::F8E4M3, {I, H}), down = random_host(DType::F8E4M3, {H, I});
  const Tensor gate_s = random_host(DType::F32, {ib, hb}), down_s = random_host(DType::F32, {hb, ib});
  for (int e = 0; e < E; ++e) {
    kept->gate.push_back({backend.upload(gate), backend.upload(gate_s)});
    kept->up.push_back({backend.upload(gate), backend.upload(gate_s)});
    kept->down.push_back({backend.upload(down), backend.upload(down_s)});
    kept->global_to_local.push_back(e);
  }
  kept_shape[0] = E;
  kept_shape[1] = H;
  kept_shape[2] = I;
  return *kept;
}

// Variants of a grouped GEMM kernel and its warp-specialized twin, FP8, aligned K.
std::vector<std::string> moe_variants(const std::string& kernel, int arch) {
  std::vector<std::string> names;
  for (const KernelVariant& v : compiled_kernel_variants()) {
    const std::string k = v.kernel;
    if (v.arch == arch && (k == kernel || k == kernel + "_ws") && v.tag("FP8") == 1 &&
        (k != kernel || v.tag("EVEN_K") == 1))
      names.push_back(k + "/" + v.name);
  }
  return names;
}

// E experts with M rows each: token t's slot j goes to expert (t * top_k + j) % E.
void bench_moe_gemm(CudaBackend& backend, const std::string& op, int E, int64_t M, int64_t H,
                    int64_t I, const std::string& variant_arg) {
  const int top_k = std::min(8, E);
  TRI_CHECK((int64_t(E) * M) % top_k == 0, "{}: E x M = {} x {} is not a multiple of top_k {}", op,
            E, M, top_k);
  const int64_t T = int64_t(E) * M / top_k, P = T * top_k;
  Tensor ids_host = cpu_tensor(DType::I32, {T, top_k});
  for (int64_t i = 0; i < P; ++i) ids_host.ptr<int32_t>()[i] = int32_t(i % E);
  const OpContext ctx{backend.context(), backend.context().stream()};
  const ExpertTables::Entry& entry =
      backend.expert_tables().get(ctx, bench_experts(backend, E, H, I));
  const MoeRoute route = moe_route(ctx, backend.upload(ids_host), entry);
  const Tensor x = backend.upload(random_host(DType::BF16, {T, H}));
  Tensor a = backend.alloc(DType::F8E4M3, {P, H}), a_s = backend.alloc(DType::F32, {P, (H + 127) / 128});
  moe_permute(ctx, route, entry, x, a, a_s);
  Tensor h = backend.alloc(DType::F8E4M3, {P, I}), h_s = backend.alloc(DType::F32, {P, (I + 127) / 128});
  Tensor y = backend.alloc(DType::BF16, {P, H});
  moe_gate_up(ctx, route, entry, a, a_s, h, h_s, "");
  const bool gate_up = op == "moe_gate_up";
  std::vector<std::string> variants;
  if (variant_arg == "all")
    variants = moe_variants(op, backend.context().arch());
  else
    variants.push_back(variant_arg == "auto" ? "" : variant_arg);
  for (const std::string& variant : variants) {
    std::string used;
    Timing t{};
    try {
      t = time_launches(backend, 1, [&](int) {
        used = gate_up ? moe_gate_up(ctx, route, entry, a, a_s, h, h_s, variant)
                       : moe_down(ctx, route, entry, h, h_s, y, variant);
      });
    } catch (const Error& e) {  // one variant that cannot run this shape; the sweep goes on
      std::fprintf(stderr, "%s %s: %s\n", op.c_str(), variant.c_str(), e.what());
      continue;
    }
    const int64_t N = gate_up ? 2 * I : H, K = gate_up ? H : I;
    const double flops = 2.0 * double(P) * double(N) * double(K);
    const double bytes = double(E) * double(N * K) + double(P) * double(K + (gate_up ? I : 2 * H));
    std::printf(
        "{\"op\": \"%s\", \"E\": %d, \"M\": %ld, \"N\": %ld, \"K\": %ld, \"variant\": \"%s\", "
        "\"sweep\": %s, \"us\": %.3f, \"us_min\": %.3f, \"tflops\": %.1f, \"gbps\": %.1f, "
        "\"flops\": %.0f, \"bytes\": %.0f}\n",
        op.c_str(), E, long(M), long(N), long(K), used.c_str(),
        variant_arg == "all" ? "true" : "false", t.median_us, t.min_us,
        flops / t.median_us * 1e-6, bytes / t.median_us * 1e-3, flops, bytes);
    std::fflush(stdout);
  }
}

void bench_moe_experts(CudaBackend& backend, int64_t T, int E, int top_k, int64_t H, int64_t I,
                       const std::string& routing, const MoeChoice& forced) {
  const ExpertWeights& experts = bench_experts(backend, E, H, I);
  Tensor ids_host = cpu_tensor(DType::I32, {T, top_k});
  Tensor w_host = cpu_tensor(DType::F32, {T, top_k});
  std::vector<int32_t> all(E);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < top_k; ++j) {
      std::swap(all[j], all[j + int(next_random() % uint64_t(E - j))]);
      ids_host.ptr<int32_t>()[t * top_k + j] =
          routing == "uniform" ? int32_t((t * top_k + j) % E) : all[j];
      w_host.ptr<float>()[t * top_k + j] = 1.0f / float(top_k);
    }
  }
  backend.set_moe_override(forced.gate_up.empty() && forced.down.empty()
                               ? std::nullopt
                               : std::optional<MoeChoice>(forced));
  const Tensor x = backend.upload(random_host(DType::BF16, {T, H}));
  const Tensor ids = backend.upload(ids_host), w = backend.upload(w_host);
  Tensor out = backend.alloc(DType::BF16, {T, H});
  const Timing t = time_launches(
      backend, 1, [&](int) { backend.moe_experts(x, ids, w, experts, out); });
  const MoeChoice used = backend.last_moe();
  backend.set_moe_override(std::nullopt);
  const double flops = 2.0 * double(T * top_k) * 3.0 * double(H) * double(I);
  std::printf(
      "{\"op\": \"moe_experts\", \"T\": %ld, \"E\": %d, \"top_k\": %d, \"H\": %ld, \"I\": %ld, "
      "\"routing\": \"%s\", \"variant\": \"%s + %s\", \"us\": %.3f, \"us_min\": %.3f, "
      "\"tflops\": %.1f}\n",
      long(T), E, top_k, long(H), long(I), routing.c_str(), used.gate_up.c_str(),
      used.down.c_str(), t.median_us, t.min_us, flops / t.median_us * 1e-6);
  std::fflush(stdout);
}

}  // namespace

int main() {
  try {
    CudaBackend backend(0);
    std::fprintf(stderr, "device: %s (sm_%d, %d SMs)\n", backend.context().name().c_str(),
                 backend.context().arch(), backend.context().sm_count());
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string op;
      if (!(in >> op) || op[0] == '#') continue;
      if (op == "fp8_gemm" || op == "bf16_gemm") {
        int64_t M = 0, N = 0, K = 0;
        std::string tile = "auto";
        int split = 0;
        in >> M >> N >> K;
        in >> tile >> split;
        bench_gemm(backend, op, M, N, K, tile, split);
      } else if (op == "act_quant") {
        int64_t M = 0, K = 0;
        in >> M >> K;
        bench_act_quant(backend, M, K);
      } else if (op == "rms_norm") {
        int64_t M = 0, N = 0;
        int residual = 0;
        in >> M >> N >> residual;
        bench_rms_norm(backend, M, N, residual != 0);
      } else if (op == "moe_gate_up" || op == "moe_down") {
        int E = 0;
        int64_t M = 0, H = 0, I = 0;
        std::string variant = "auto";
        in >> E >> M >> H >> I;
        in >> variant;
        bench_moe_gemm(backend, op, E, M, H, I, variant);
      } else if (op == "moe_experts") {
        int64_t T = 0, H = 0, I = 0;
        int E = 0, top_k = 0;
        std::string routing = "random", gate_up = "auto", down = "auto";
        in >> T >> E >> top_k >> H >> I;
        in >> routing >> gate_up >> down;
        bench_moe_experts(backend, T, E, top_k, H, I, routing,
                          {gate_up == "auto" ? "" : gate_up, down == "auto" ? "" : down});
      } else if (op == "mla_decode") {
        int64_t B = 0, context = 0;
        int heads = 0, splits = 0;
        std::string variant = "auto";
        in >> B >> context >> heads;
        in >> variant >> splits;
        bench_mla_decode(backend, B, context, heads, variant, splits);
      } else {
        fail("unknown benchmark case '{}'", line);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trident_kernel_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
