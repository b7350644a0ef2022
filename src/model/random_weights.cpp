#include "model/random_weights.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace trident {

namespace {

constexpr int64_t kBlock = LinearWeight::kBlock;
constexpr int64_t kRowElems = RandomWeights::kRowBytes / 2;  // BF16 elements per row
constexpr int64_t kBlockRows = 4096;                          // 16 MB per random block
constexpr int64_t kIdRows = 65536;                            // rows filled per gather

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Uniform in [-sqrt(3), sqrt(3)) * rms: RMS `rms`.
uint16_t random_bf16(std::mt19937_64& rng, float rms) {
  const double u = double(rng() >> 11) * 0x1.0p-53;  // [0, 1)
  return f32_to_bf16(float((2.0 * u - 1.0) * std::sqrt(3.0) * rms));
}

}  // namespace

RandomWeights::RandomWeights(Backend& backend, const ModelConfig& config, uint64_t seed)
    : backend_(backend), config_(config), rng_(seed) {
  TRI_CHECK(config.fp8, "random weights are made in DeepSeek's FP8 layout; the config is not FP8");
  // e4m3 codes, NaN (0x7f, 0xff) excluded. Read as BF16 pairs, the high byte of each is a code,
  // so no pair is a BF16 NaN or infinity and the row copies move them bit for bit.
  Tensor codes = cpu_tensor(DType::BF16, {kBlockRows, kRowElems});
  auto* bytes = static_cast<uint8_t*>(codes.data);
  double sum_sq = 0;
  for (int64_t i = 0; i < kBlockRows * kRowBytes; ++i) {
    uint8_t b = uint8_t(rng_());
    if ((b & 0x7f) == 0x7f) b ^= 1;
    bytes[i] = b;
    const double v = fp8e4m3_to_f32(b);
    sum_sq += v * v;
  }
  code_rms_ = std::sqrt(sum_sq / double(kBlockRows * kRowBytes));
  code_block_ = backend_.upload(codes);
  Tensor ids = cpu_tensor(DType::I32, {kIdRows});
  std::uniform_int_distribution<int32_t> row(0, int32_t(kBlockRows - 1));
  for (int64_t i = 0; i < kIdRows; ++i) ids.ptr<int32_t>()[i] = row(rng_);
  row_ids_ = backend_.upload(ids);
}

int64_t RandomWeights::globals_bytes(const ModelConfig& c) {
  return 2 * int64_t(c.vocab_size) * c.hidden_size * 2 + int64_t(c.hidden_size) * 2;
}

int64_t RandomWeights::layer_bytes(const ModelConfig& c, bool moe, int experts,
                                   DType activation_dtype) {
  const int64_t hidden = c.hidden_size, H = c.num_attention_heads;
  auto fp8 = [](int64_t out, int64_t in) {
    return out * in + ceil_div(out, kBlock) * ceil_div(in, kBlock) * 4;
  };
  auto mlp = [&](int64_t inter) { return 2 * fp8(inter, hidden) + fp8(hidden, inter); };
  int64_t bytes = 2 * hidden * 2;  // norms
  bytes += c.q_lora_rank > 0 ? fp8(c.q_lora_rank, hidden) + c.q_lora_rank * 2 +
                                   fp8(H * c.qk_head_dim(), c.q_lora_rank)
                             : fp8(H * c.qk_head_dim(), hidden);
  bytes += fp8(c.kv_cache_dim(), hidden) + c.kv_lora_rank * 2;
  bytes += fp8(H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  bytes += H * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank *
           int64_t(dtype_size(activation_dtype));
  bytes += fp8(hidden, H * c.v_head_dim);
  if (!moe) return bytes + mlp(c.intermediate_size);
  bytes += int64_t(c.n_routed_experts) * hidden * 2 + c.n_routed_experts * 4;
  bytes += experts * mlp(c.moe_intermediate_size);
  return bytes + mlp(int64_t(c.moe_intermediate_size) * c.n_shared_experts);
}

const Tensor& RandomWeights::bf16_block(float rms) {
  auto it = bf16_blocks_.find(rms);
  if (it != bf16_blocks_.end()) return it->second;
  Tensor host = cpu_tensor(DType::BF16, {kBlockRows, kRowElems});
  for (int64_t i = 0; i < host.numel(); ++i) host.ptr<uint16_t>()[i] = random_bf16(rng_, rms);
  return bf16_blocks_.emplace(rms, backend_.upload(host)).first->second;
}

void RandomWeights::fill_rows(Tensor& t, const Tensor& block) {
  const int64_t rows = int64_t(t.nbytes()) / kRowBytes;
  if (rows == 0) return;
  const Tensor view(t.data, DType::BF16, {rows, kRowElems}, t.device, t.device_index);
  for (int64_t done = 0; done < rows; done += kIdRows) {
    const int64_t n = std::min(kIdRows, rows - done);
    const int64_t at = std::uniform_int_distribution<int64_t>(0, kIdRows - n)(rng_);
    Tensor out = view.rows(done, done + n);
    backend_.embedding(row_ids_.rows(at, at + n), block, out);
  }
}

void RandomWeights::fill(Tensor& t, float rms) { fill_rows(t, bf16_block(rms)); }

void RandomWeights::fill_fp8_codes(Tensor& t) { fill_rows(t, code_block_); }

LinearWeight RandomWeights::fp8_linear(int64_t out, int64_t in) {
  LinearWeight w;
  w.weight = backend_.alloc(DType::F8E4M3, {out, in});
  TRI_CHECK(int64_t(w.weight.nbytes()) % kRowBytes == 0,
            "random weights: an FP8 [{}, {}] layer is not a whole number of {}-byte rows; this "
            "shape needs a smaller RandomWeights::kRowBytes",
            out, in, kRowBytes);
  fill_rows(w.weight, code_block_);
  Tensor scales = cpu_tensor(DType::F32, {ceil_div(out, kBlock), ceil_div(in, kBlock)});
  const double base = 1.0 / (code_rms_ * std::sqrt(double(in)));
  std::uniform_real_distribution<double> vary(0.5, 1.5);
  for (int64_t i = 0; i < scales.numel(); ++i)
    scales.ptr<float>()[i] = float(base * vary(rng_));
  w.scale_inv = backend_.upload(scales);
  return w;
}

Tensor RandomWeights::bf16_tensor(std::initializer_list<int64_t> shape, float rms) {
  Tensor t = backend_.alloc(DType::BF16, shape);
  if (int64_t(t.nbytes()) % kRowBytes == 0) {
    fill(t, rms);
    return t;
  }
  // Small tensors (norm weights): made on the host.
  Tensor host = cpu_tensor(DType::BF16, shape);
  for (int64_t i = 0; i < host.numel(); ++i) host.ptr<uint16_t>()[i] = random_bf16(rng_, rms);
  return backend_.upload(host);
}

Tensor RandomWeights::ones(int64_t n) {
  Tensor host = cpu_tensor(DType::BF16, {n});
  std::fill_n(host.ptr<uint16_t>(), n, f32_to_bf16(1.0f));
  return backend_.upload(host);
}

ModelWeights RandomWeights::globals() {
  const ModelConfig& c = config_;
  ModelWeights m;
  m.embed = bf16_tensor({c.vocab_size, c.hidden_size}, 1.0f);
  m.final_norm = ones(c.hidden_size);
  m.lm_head.weight = bf16_tensor({c.vocab_size, c.hidden_size},
                                 float(1.0 / std::sqrt(double(c.hidden_size))));
  return m;
}

LayerWeights RandomWeights::layer(int layer, const std::function<bool(int expert)>& holds_expert) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, H = c.num_attention_heads;
  LayerWeights L;
  L.input_norm = ones(hidden);
  L.post_attention_norm = ones(hidden);

  AttentionWeights& a = L.attn;
  if (c.q_lora_rank > 0) {
    a.q_a = fp8_linear(c.q_lora_rank, hidden);
    a.q_a_norm = ones(c.q_lora_rank);
    a.q_b = fp8_linear(H * c.qk_head_dim(), c.q_lora_rank);
  } else {
    a.q_proj = fp8_linear(H * c.qk_head_dim(), hidden);
  }
  a.kv_a = fp8_linear(c.kv_cache_dim(), hidden);
  a.mla.kv_a_norm = ones(c.kv_lora_rank);
  a.mla.kv_b = fp8_linear(H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  const DType act = backend_.activation_dtype();
  a.mla.w_uk = backend_.alloc(act, {H, c.qk_nope_head_dim, c.kv_lora_rank});
  fill(a.mla.w_uk, float(1.0 / std::sqrt(double(c.qk_nope_head_dim))));
  a.mla.w_uv = backend_.alloc(act, {H, c.v_head_dim, c.kv_lora_rank});
  fill(a.mla.w_uv, float(1.0 / std::sqrt(double(c.kv_lora_rank))));
  a.o = fp8_linear(hidden, H * c.v_head_dim);

  L.is_moe = c.is_moe_layer(layer);
  auto mlp = [&](int64_t inter) {
    MlpWeights m;
    m.gate = fp8_linear(inter, hidden);
    m.up = fp8_linear(inter, hidden);
    m.down = fp8_linear(hidden, inter);
    return m;
  };
  if (!L.is_moe) {
    L.mlp = mlp(c.intermediate_size);
    return L;
  }
  MoeWeights& moe = L.moe;
  // The release keeps the router in BF16; logits of unit spread for unit-RMS inputs.
  moe.router.weight =
      bf16_tensor({c.n_routed_experts, hidden}, float(1.0 / std::sqrt(double(hidden))));
  if (c.topk_method == TopkMethod::NoauxTc)
    moe.router_bias = backend_.upload(cpu_tensor(DType::F32, {c.n_routed_experts}));
  moe.experts.global_to_local.assign(c.n_routed_experts, -1);
  for (int e = 0; e < c.n_routed_experts; ++e) {
    if (holds_expert && !holds_expert(e)) continue;
    MlpWeights ex = mlp(c.moe_intermediate_size);
    moe.experts.global_to_local[e] = int32_t(moe.experts.gate.size());
    moe.experts.gate.push_back(ex.gate);
    moe.experts.up.push_back(ex.up);
    moe.experts.down.push_back(ex.down);
  }
  if (c.n_shared_experts > 0) {
    moe.has_shared = true;
    moe.shared = mlp(int64_t(c.moe_intermediate_size) * c.n_shared_experts);
  }
  return L;
}

}  // namespace trident
