// Normal-mode dispatch and combine on host memory: the token counts are exchanged first, so every
// all-to-all moves exactly what is needed. A dispatched row is one token's payload (activations,
// or FP8 codes and their scales) followed by its k expert ids and k gate weights; combine sends
// back the expert sums in the activation dtype and adds them per token in f32, ranks in order.
#include <fmt/format.h>

#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "parallel/dispatch_combine.h"
#include "parallel/dispatch_plan.h"

namespace trident {

namespace {

constexpr int64_t kQuantBlock = 128;

class NormalDispatchCombine final : public DispatchCombine {
 public:
  NormalDispatchCombine(Communicator& comm, const DispatchConfig& config)
      : comm_(comm), config_(config) {
    TRI_CHECK(comm.payload_device() == Device::CPU,
              "normal-mode dispatch moves host memory, but this communicator's buffers are on a "
              "GPU; GPU ranks need the device dispatch kernels");
    TRI_CHECK(config.hidden > 0 && config.top_k > 0 && config.n_experts > 0,
              "dispatch config needs hidden size, top-k and expert count, got {}, {}, {}",
              config.hidden, config.top_k, config.n_experts);
    const int64_t H = config.hidden;
    payload_bytes_ = config.fp8_payload
                         ? H + (H + kQuantBlock - 1) / kQuantBlock * int64_t(sizeof(float))
                         : H * int64_t(dtype_size(config.activation));
    row_bytes_ = payload_bytes_ + int64_t(config.top_k) * 8;
  }

  DispatchMode mode() const override { return DispatchMode::Normal; }

  ReceivedTokens dispatch(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                          const ExpertPlacement& placement, std::string_view what) override {
    const int R = comm_.size(), K = config_.top_k;
    const int64_t T = x.defined() ? x.dim(0) : 0;
    check_inputs(x, topk_ids, topk_weights, placement, T);
    plan_ = plan_dispatch(T ? topk_ids.ptr<int32_t>() : nullptr, T, K, placement, comm_.rank());
    n_tokens_ = T;
    recv_counts_.assign(R, 0);
    comm_.exchange_counts(plan_.send_counts, recv_counts_,
                          fmt::format("dispatch counts, {}", what));

    const int64_t rows_out = int64_t(plan_.send_token.size());
    std::vector<char> send(size_t(rows_out * row_bytes_));
    std::vector<float> row(config_.hidden);
    for (int64_t i = 0; i < rows_out; ++i) {
      const int32_t t = plan_.send_token[i];
      char* rec = send.data() + i * row_bytes_;
      pack_payload(x, t, row, rec);
      std::memcpy(rec + payload_bytes_, &plan_.send_ids[i * K], K * sizeof(int32_t));
      std::memcpy(rec + payload_bytes_ + K * 4, topk_weights.ptr<float>() + t * K,
                  K * sizeof(float));
    }
    n_received_ = 0;
    for (int64_t c : recv_counts_) n_received_ += c;
    std::vector<char> recv(size_t(n_received_ * row_bytes_));
    comm_.all_to_all_v(send.data(), byte_sizes(plan_.send_counts, row_bytes_), recv.data(),
                       byte_sizes(recv_counts_, row_bytes_), fmt::format("dispatch, {}", what));

    ReceivedTokens got;
    got.n = n_received_;
    if (n_received_ == 0) return got;
    got.x = cpu_tensor(config_.activation, {n_received_, config_.hidden});
    got.topk_ids = cpu_tensor(DType::I32, {n_received_, K});
    got.topk_weights = cpu_tensor(DType::F32, {n_received_, K});
    for (int64_t i = 0; i < n_received_; ++i) {
      const char* rec = recv.data() + i * row_bytes_;
      unpack_payload(rec, i, row, got.x);
      std::memcpy(got.topk_ids.ptr<int32_t>() + i * K, rec + payload_bytes_, K * sizeof(int32_t));
      std::memcpy(got.topk_weights.ptr<float>() + i * K, rec + payload_bytes_ + K * 4,
                  K * sizeof(float));
    }
    return got;
  }

  void combine(const Tensor& expert_out, Tensor& out, std::string_view what) override {
    const int64_t H = config_.hidden;
    const size_t act = dtype_size(config_.activation);
    if (n_received_ > 0)
      TRI_CHECK(expert_out.defined() && expert_out.dim(0) == n_received_ &&
                    expert_out.row_size() == H && expert_out.dtype == config_.activation,
                "combine: expert output {} {} should be {} [{}, {}]",
                expert_out.defined() ? dtype_name(expert_out.dtype) : "none",
                expert_out.defined() ? expert_out.shape_str() : "", dtype_name(config_.activation),
                n_received_, H);
    if (n_tokens_ > 0)
      TRI_CHECK(out.defined() && out.dim(0) == n_tokens_ && out.row_size() == H,
                "combine: output {} does not fit {} tokens of {}",
                out.defined() ? out.shape_str() : "none", n_tokens_, H);
    const int64_t rows_back = int64_t(plan_.send_token.size());
    std::vector<char> back(size_t(rows_back) * H * act);
    comm_.all_to_all_v(n_received_ ? expert_out.data : nullptr, byte_sizes(recv_counts_, H * act),
                       back.data(), byte_sizes(plan_.send_counts, H * act),
                       fmt::format("combine, {}", what));
    if (n_tokens_ == 0) return;
    const Tensor partials(back.data(), config_.activation, {rows_back, H});
    std::vector<float> sum(size_t(n_tokens_ * H), 0.0f), row(H);
    for (int64_t i = 0; i < rows_back; ++i) {
      cpu::read_row(partials, i, row.data());
      float* s = &sum[size_t(plan_.send_token[i]) * H];
      for (int64_t c = 0; c < H; ++c) s[c] += row[c];
    }
    for (int64_t t = 0; t < n_tokens_; ++t) cpu::write_row(out, t, &sum[size_t(t) * H]);
  }

 private:
  void check_inputs(const Tensor& x, const Tensor& ids, const Tensor& weights,
                    const ExpertPlacement& placement, int64_t T) const {
    TRI_CHECK(placement.n_ranks() == comm_.size() && placement.n_experts() == config_.n_experts,
              "dispatch: placement of {} experts over {} ranks, but the group has {} ranks and "
              "the model {} experts",
              placement.n_experts(), placement.n_ranks(), comm_.size(), config_.n_experts);
    if (T == 0) return;
    TRI_CHECK(
        x.device == Device::CPU && x.dtype == config_.activation && x.row_size() == config_.hidden,
        "dispatch: tokens {} {} should be host {} rows of {}", dtype_name(x.dtype), x.shape_str(),
        dtype_name(config_.activation), config_.hidden);
    TRI_CHECK(ids.dtype == DType::I32 && ids.numel() == T * config_.top_k &&
                  weights.dtype == DType::F32 && weights.numel() == T * config_.top_k,
              "dispatch: expert ids {} and weights {} should be i32 and f32 [{}, {}]",
              ids.shape_str(), weights.shape_str(), T, config_.top_k);
  }

  void pack_payload(const Tensor& x, int32_t t, std::vector<float>& row, char* rec) const {
    const int64_t H = config_.hidden;
    if (!config_.fp8_payload) {
      const size_t bytes = size_t(H) * dtype_size(config_.activation);
      std::memcpy(rec, static_cast<const char*>(x.data) + size_t(t) * bytes, bytes);
      return;
    }
    std::vector<float> q(H);
    cpu::read_row(x, t, row.data());
    float* scales = reinterpret_cast<float*>(rec + H);
    std::vector<float> s((H + kQuantBlock - 1) / kQuantBlock);
    cpu::quantize_row_fp8(row.data(), H, q.data(), s.data());
    for (int64_t c = 0; c < H; ++c) reinterpret_cast<uint8_t*>(rec)[c] = f32_to_fp8e4m3(q[c]);
    std::memcpy(scales, s.data(), s.size() * sizeof(float));
  }

  void unpack_payload(const char* rec, int64_t i, std::vector<float>& row, Tensor& x) const {
    const int64_t H = config_.hidden;
    if (!config_.fp8_payload) {
      const size_t bytes = size_t(H) * dtype_size(config_.activation);
      std::memcpy(static_cast<char*>(x.data) + size_t(i) * bytes, rec, bytes);
      return;
    }
    const uint8_t* codes = reinterpret_cast<const uint8_t*>(rec);
    const int64_t nb = (H + kQuantBlock - 1) / kQuantBlock;
    std::vector<float> s(nb);
    std::memcpy(s.data(), rec + H, nb * sizeof(float));
    for (int64_t c = 0; c < H; ++c) row[c] = fp8e4m3_to_f32(codes[c]) * s[c / kQuantBlock];
    cpu::write_row(x, i, row.data());
  }

  static std::vector<size_t> byte_sizes(const std::vector<int64_t>& rows, int64_t row_bytes) {
    std::vector<size_t> b(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) b[r] = size_t(rows[r] * row_bytes);
    return b;
  }

  Communicator& comm_;
  DispatchConfig config_;
  int64_t payload_bytes_ = 0, row_bytes_ = 0;
  // The last dispatch, for its combine.
  DispatchPlan plan_;
  std::vector<int64_t> recv_counts_;
  int64_t n_tokens_ = 0, n_received_ = 0;
};

}  // namespace

std::unique_ptr<DispatchCombine> make_normal_dispatch_combine(Communicator& comm,
                                                              const DispatchConfig& config) {
  return std::make_unique<NormalDispatchCombine>(comm, config);
}

}  // namespace trident
