// Normal-mode dispatch and combine on GPU memory. The host downloads the gate's choices, plans the
// rows (plan_dispatch, as the CPU ranks do), exchanges the counts; ep_pack gathers the rows into
// the send buffer, the communicator's all-to-all (NCCL) moves them, ep_unpack splits what arrived.
// Combine sends the bf16 expert sums back the same way and ep_combine adds each token's partials
// in rank order, in f32.
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"
#include "parallel/cuda/device_dispatch_combine.h"
#include "parallel/cuda/exchange_rows.h"
#include "parallel/dispatch_plan.h"

namespace trident {

namespace {

using cuda::device_ptr;
using cuda::device_tensor;

constexpr int kCombineBlock = 1024;

class DeviceNormalDispatchCombine final : public DispatchCombine {
 public:
  DeviceNormalDispatchCombine(Communicator& comm, const DispatchConfig& config,
                              cuda::DeviceContext& device, CUstream stream)
      : comm_(comm),
        config_(config),
        device_(device),
        stream_(stream),
        rows_(ExchangeRowLayout::of(config.hidden, config.top_k, config.fp8_payload)) {
    TRI_CHECK(comm.payload_device() == Device::CUDA,
              "GPU dispatch exchanges GPU memory, but this communicator moves host memory");
    TRI_CHECK(config.activation == DType::BF16,
              "GPU dispatch moves bf16 activations, the config says {}",
              dtype_name(config.activation));
  }

  DispatchMode mode() const override { return DispatchMode::Normal; }

  ReceivedTokens dispatch(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                          const ExpertPlacement& placement, std::string_view what) override {
    const int R = comm_.size(), K = config_.top_k, H = config_.hidden;
    const int64_t T = x.defined() ? x.dim(0) : 0;
    TRI_CHECK(placement.n_ranks() == R && placement.n_experts() == config_.n_experts,
              "dispatch: placement of {} experts over {} ranks, but the group has {} ranks and "
              "the model {} experts",
              placement.n_experts(), placement.n_ranks(), R, config_.n_experts);
    std::vector<int32_t> ids(size_t(T) * K);
    if (T > 0) {
      expect(x, DType::BF16, H, "tokens");
      expect(topk_ids, DType::I32, K, "expert ids");
      expect(topk_weights, DType::F32, K, "gate weights");
      download(topk_ids, ids.data());
    }
    plan_ = plan_dispatch(ids.data(), T, K, placement, comm_.rank());
    n_tokens_ = T;
    recv_counts_.assign(R, 0);
    comm_.exchange_counts(plan_.send_counts, recv_counts_, fmt::format("dispatch counts, {}", what));
    const int64_t rows_out = int64_t(plan_.send_token.size());
    n_received_ = 0;
    for (int64_t c : recv_counts_) n_received_ += c;

    Tensor send = buffer(rows_out * rows_.row_bytes);
    if (rows_out > 0) {
      Tensor tokens = upload(plan_.send_token, {rows_out});
      Tensor send_ids = upload(plan_.send_ids, {rows_out, K});
      cuda::kernels::ep_pack(launch(unsigned(rows_out)), variant("ep_pack"), device_ptr(x),
                             device_ptr(tokens), device_ptr(send_ids), device_ptr(topk_weights),
                             device_ptr(send), H, K, int32_t(rows_.ids_offset),
                             int32_t(rows_.row_bytes));
    }
    Tensor recv = buffer(n_received_ * rows_.row_bytes);
    comm_.all_to_all_v(send.data, byte_sizes(plan_.send_counts, rows_.row_bytes), recv.data,
                       byte_sizes(recv_counts_, rows_.row_bytes), fmt::format("dispatch, {}", what));
    ReceivedTokens got;
    got.n = n_received_;
    if (n_received_ == 0) return got;
    got.x = device_tensor(device_, DType::BF16, {n_received_, H});
    got.topk_ids = device_tensor(device_, DType::I32, {n_received_, K});
    got.topk_weights = device_tensor(device_, DType::F32, {n_received_, K});
    cuda::kernels::ep_unpack(launch(unsigned(n_received_)), variant("ep_unpack"), device_ptr(recv),
                             device_ptr(got.x), device_ptr(got.topk_ids),
                             device_ptr(got.topk_weights), H, K, int32_t(rows_.ids_offset),
                             int32_t(rows_.row_bytes));
    return got;
  }

  void combine(const Tensor& expert_out, Tensor& out, std::string_view what) override {
    const int R = comm_.size(), H = config_.hidden;
    if (n_received_ > 0) expect(expert_out, DType::BF16, H, "expert output");
    if (n_received_ > 0)
      TRI_CHECK(expert_out.dim(0) == n_received_, "combine: expert output has {} rows, {} came",
                expert_out.dim(0), n_received_);
    if (n_tokens_ > 0) {
      expect(out, DType::BF16, H, "output");
      TRI_CHECK(out.dim(0) == n_tokens_, "combine: output has {} rows for {} tokens", out.dim(0),
                n_tokens_);
    }
    const int64_t rows_back = int64_t(plan_.send_token.size());
    Tensor back = buffer(rows_back * H * 2);
    comm_.all_to_all_v(n_received_ ? expert_out.data : nullptr, byte_sizes(recv_counts_, H * 2),
                       back.data, byte_sizes(plan_.send_counts, H * 2),
                       fmt::format("combine, {}", what));
    if (n_tokens_ == 0) return;
    // The row each rank sent back for each token: rows are by destination rank, then by token.
    std::vector<int32_t> row_of(size_t(n_tokens_) * R, -1);
    int64_t i = 0;
    for (int r = 0; r < R; ++r)
      for (int64_t c = 0; c < plan_.send_counts[r]; ++c, ++i)
        row_of[size_t(plan_.send_token[i]) * R + r] = int32_t(i);
    Tensor rows = upload(row_of, {n_tokens_, R});
    cuda::kernels::ep_combine(
        {device_, stream_, {unsigned(n_tokens_), unsigned((H + kCombineBlock - 1) / kCombineBlock), 1}},
        cuda::select_variant("ep_combine", device_.arch(), {{"BLOCK", kCombineBlock}}),
        device_ptr(back), device_ptr(rows), device_ptr(out), R, H);
  }

 private:
  void expect(const Tensor& t, DType dtype, int64_t row, const char* what) const {
    TRI_CHECK(t.defined() && t.device == Device::CUDA && t.device_index == device_.ordinal() &&
                  t.dtype == dtype && t.row_size() == row,
              "GPU dispatch: {} {} {} should be {} rows of {} on GPU {}", what,
              t.defined() ? dtype_name(t.dtype) : "none", t.defined() ? t.shape_str() : "",
              dtype_name(dtype), row, device_.ordinal());
  }

  cuda::Launch launch(unsigned grid) const { return {device_, stream_, {grid, 1, 1}}; }

  const cuda::KernelVariant& variant(const char* kernel) const {
    return cuda::select_variant(kernel, device_.arch(), {{"FP8", config_.fp8_payload ? 1 : 0}});
  }

  // Device bytes for an exchange (at least 16, so an empty exchange still has an address).
  Tensor buffer(int64_t bytes) const {
    return device_tensor(device_, DType::U8, {std::max<int64_t>(bytes, 16)});
  }

  Tensor upload(const std::vector<int32_t>& host, std::initializer_list<int64_t> shape) const {
    Tensor t = device_tensor(device_, DType::I32, shape);
    cuda::check(cuda::cu().cuMemcpyHtoDAsync(device_ptr(t), host.data(), t.nbytes(),
                                             stream_),
                "uploading a dispatch plan");
    return t;
  }

  void download(const Tensor& t, void* host) const {
    cuda::check(cuda::cu().cuMemcpyDtoHAsync(host, device_ptr(t), t.nbytes(), stream_),
                "downloading the gate's choices");
    cuda::check(cuda::cu().cuStreamSynchronize(stream_), "downloading the gate's choices");
  }

  static std::vector<size_t> byte_sizes(const std::vector<int64_t>& rows, int64_t row_bytes) {
    std::vector<size_t> b(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) b[r] = size_t(rows[r] * row_bytes);
    return b;
  }

  Communicator& comm_;
  DispatchConfig config_;
  cuda::DeviceContext& device_;
  CUstream stream_;
  ExchangeRowLayout rows_;
  // The last dispatch, for its combine.
  DispatchPlan plan_;
  std::vector<int64_t> recv_counts_;
  int64_t n_tokens_ = 0, n_received_ = 0;
};

}  // namespace

std::unique_ptr<DispatchCombine> make_device_normal_dispatch_combine(Communicator& comm,
                                                                     const DispatchConfig& config,
                                                                     cuda::DeviceContext& device,
                                                                     CUstream stream) {
  return std::make_unique<DeviceNormalDispatchCombine>(comm, config, device, stream);
}

}  // namespace trident
