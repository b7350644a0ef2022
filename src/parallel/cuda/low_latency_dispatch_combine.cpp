// Low-latency dispatch and combine (kernels/ep_low_latency.py): rows go straight into the peers'
// receive buffers of a PeerMemory, and the four kernels of an exchange wait on flags instead of
// the host, so nothing here synchronizes with the GPU. A peer that misses a deadline is recorded
// on the GPU (the kernels then stop waiting) and reported by check_peers, between steps.
//
// Received tokens come back padded: slot (source s, i) is row s * cap + i of a [ranks * cap, H]
// tensor, and the empty slots carry no expert (ids = n_experts, weight 0), which the experts skip.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_context.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"
#include "parallel/cuda/device_dispatch_combine.h"
#include "parallel/cuda/exchange_rows.h"
#include "parallel/cuda/peer_memory.h"

namespace trident {

namespace {

using cuda::device_ptr;
using cuda::device_tensor;

// Limits of the kernels' register blocks (kernels/ep_low_latency.py).
constexpr int kMaxRanks = 64;
constexpr int kMaxCopies = 16;
constexpr int kCopyBlock = 1024;

struct SharedLayout {
  int64_t combine_offset, dispatch_flags, combine_flags, bytes;

  SharedLayout(int ranks, int64_t cap, int64_t hidden, int64_t row_bytes) {
    combine_offset = ranks * cap * row_bytes;
    dispatch_flags = (combine_offset + ranks * cap * hidden * 2 + 15) / 16 * 16;
    combine_flags = dispatch_flags + 8 * ranks;
    bytes = combine_flags + 8 * ranks;
  }
};

// An expert placement as the kernels read it.
struct DeviceExpertMap {
  Tensor physical, copies;
  int max_copies = 0, slots_per_rank = 0;
};

class LowLatencyDispatchCombine final : public DispatchCombine {
 public:
  LowLatencyDispatchCombine(Communicator& comm, const DispatchConfig& config,
                            cuda::DeviceContext& device, CUstream stream, int64_t cap,
                            std::unique_ptr<PeerMemory> peers, const SharedLayout& layout)
      : comm_(comm),
        config_(config),
        device_(device),
        stream_(stream),
        cap_(cap),
        rows_(ExchangeRowLayout::of(config.hidden, config.top_k, config.fp8_payload)),
        layout_(layout),
        peers_(std::move(peers)) {
    const int R = comm.size();
    send_counter_ = device_tensor(device_, DType::I32, {kMaxRanks});
    send_slot_ = device_tensor(device_, DType::I32, {cap * R});
    recv_count_ = device_tensor(device_, DType::I32, {R});
    done_ = device_tensor(device_, DType::I32, {1});
    epoch_ = device_tensor(device_, DType::I64, {1});
    status_ = device_tensor(device_, DType::I32, {1});
    peer_addresses_ = device_tensor(device_, DType::I64, {R});
    x_ = device_tensor(device_, DType::BF16, {R * cap, config.hidden});
    ids_ = device_tensor(device_, DType::I32, {R * cap, config.top_k});
    weights_ = device_tensor(device_, DType::F32, {R * cap, config.top_k});
    // The memory comes from the device's stream-ordered pool; it is ready for this stream once
    // the device's stream has passed the allocations.
    const cuda::DriverApi& cu = cuda::cu();
    cuda::check(cu.cuStreamSynchronize(device_.stream()), "allocating dispatch buffers");
    // Slots no token fills in an exchange keep what an earlier one left: finite values.
    for (const Tensor* t : {&send_counter_, &send_slot_, &recv_count_, &done_, &epoch_, &status_, &x_})
      cuda::check(cu.cuMemsetD8Async(device_ptr(*t), 0, t->nbytes(), stream_),
                  "clearing low-latency dispatch state");
    std::vector<int64_t> addresses(peers_->peers().begin(), peers_->peers().end());
    cuda::check(cu.cuMemcpyHtoDAsync(device_ptr(peer_addresses_), addresses.data(),
                                     addresses.size() * 8, stream_),
                "uploading peer addresses");
    timeout_ns_ = int64_t(comm.timeout().count()) * 1000000;
  }

  DispatchMode mode() const override { return DispatchMode::LowLatency; }
  int64_t max_tokens_per_exchange() const override { return cap_; }

  ReceivedTokens dispatch(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                          const ExpertPlacement& placement, std::string_view what) override {
    const int R = comm_.size(), K = config_.top_k, H = config_.hidden;
    const int64_t T = x.defined() ? x.dim(0) : 0;
    TRI_CHECK(T <= cap_,
              "low-latency dispatch '{}': {} tokens, the buffers hold {} per rank (the caller "
              "splits larger batches)",
              what, T, cap_);
    if (T > 0) {
      expect(x, DType::BF16, H, "tokens");
      expect(topk_ids, DType::I32, K, "expert ids");
      expect(topk_weights, DType::F32, K, "gate weights");
    }
    const DeviceExpertMap& map = device_map(placement);
    n_tokens_ = T;
    const int fp8 = config_.fp8_payload ? 1 : 0;
    cuda::kernels::ep_ll_dispatch_send(
        launch(programs(T)), cuda::select_variant("ep_ll_dispatch_send", device_.arch(), {{"FP8", fp8}}),
        T ? device_ptr(x) : 0, T ? device_ptr(topk_ids) : 0, T ? device_ptr(topk_weights) : 0,
        int32_t(T), device_ptr(map.physical), device_ptr(map.copies), map.max_copies,
        map.slots_per_rank, config_.n_experts, device_ptr(peer_addresses_), comm_.rank(), R,
        int32_t(cap_), layout_.dispatch_flags, device_ptr(send_counter_), device_ptr(send_slot_),
        device_ptr(done_), device_ptr(epoch_), H, K, int32_t(rows_.ids_offset),
        int32_t(rows_.row_bytes));
    cuda::kernels::ep_ll_dispatch_recv(
        launch(programs(R * cap_)),
        cuda::select_variant("ep_ll_dispatch_recv", device_.arch(), {{"FP8", fp8}}),
        peers_->local(), device_ptr(x_), device_ptr(ids_), device_ptr(weights_),
        device_ptr(recv_count_), device_ptr(epoch_), device_ptr(status_), timeout_ns_, R,
        int32_t(cap_), config_.n_experts, layout_.dispatch_flags, H, K,
        int32_t(rows_.ids_offset), int32_t(rows_.row_bytes));
    return {x_, ids_, weights_, R * cap_};
  }

  void combine(const Tensor& expert_out, Tensor& out, std::string_view what) override {
    const int R = comm_.size(), H = config_.hidden;
    expect(expert_out, DType::BF16, H, "expert output");
    TRI_CHECK(expert_out.dim(0) == R * cap_, "low-latency combine '{}': {} expert rows, not {}",
              what, expert_out.dim(0), R * cap_);
    if (n_tokens_ > 0) {
      expect(out, DType::BF16, H, "output");
      TRI_CHECK(out.dim(0) == n_tokens_, "low-latency combine '{}': {} output rows for {} tokens",
                what, out.dim(0), n_tokens_);
    }
    cuda::kernels::ep_ll_combine_send(
        launch(programs(R * cap_)),
        cuda::select_variant("ep_ll_combine_send", device_.arch(), {{"BLOCK", kCopyBlock}}),
        device_ptr(expert_out), device_ptr(peer_addresses_), comm_.rank(), R, int32_t(cap_),
        layout_.combine_offset, layout_.combine_flags, device_ptr(recv_count_),
        device_ptr(done_), device_ptr(epoch_), H);
    cuda::kernels::ep_ll_combine_recv(
        launch(programs(n_tokens_)),
        cuda::select_variant("ep_ll_combine_recv", device_.arch(), {{"BLOCK", kCopyBlock}}),
        peers_->local(), n_tokens_ ? device_ptr(out) : 0, int32_t(n_tokens_),
        device_ptr(send_slot_), R, int32_t(cap_), layout_.combine_offset, layout_.combine_flags,
        device_ptr(done_), device_ptr(epoch_), device_ptr(status_), timeout_ns_, H);
  }

  void forget_placements() override { maps_.clear(); }

  void check_peers(std::string_view what) override {
    int32_t status = 0;
    cuda::check(cuda::cu().cuMemcpyDtoHAsync(&status, device_ptr(status_), sizeof(status),
                                             stream_),
                "reading the low-latency dispatch status");
    cuda::check(cuda::cu().cuStreamSynchronize(stream_),
                "reading the low-latency dispatch status");
    if (status == 0) return;
    throw RankFailure(fmt::format(
        "rank {} did not arrive at a low-latency {} (during {}) within {:.3g} s: exited, crashed "
        "or hung (the limit is --ep-timeout)",
        (status & 0xFFFF) - 1, status >> 16 == 1 ? "dispatch" : "combine", what,
        double(timeout_ns_) / 1e9));
  }

 private:
  void expect(const Tensor& t, DType dtype, int64_t row, const char* what) const {
    TRI_CHECK(t.defined() && t.device == Device::CUDA && t.device_index == device_.ordinal() &&
                  t.dtype == dtype && t.row_size() == row,
              "low-latency dispatch: {} {} {} should be {} rows of {} on GPU {}", what,
              t.defined() ? dtype_name(t.dtype) : "none", t.defined() ? t.shape_str() : "",
              dtype_name(dtype), row, device_.ordinal());
  }

  // Programs of a kernel over `items` work items: enough to cover them, at most one per SM; at
  // least one, which raises the flags when there is nothing else to do.
  unsigned programs(int64_t items) const {
    return unsigned(std::clamp<int64_t>(items, 1, device_.sm_count()));
  }

  cuda::Launch launch(unsigned grid) const { return {device_, stream_, {grid, 1, 1}}; }

  const DeviceExpertMap& device_map(const ExpertPlacement& placement) {
    auto it = maps_.find(&placement);
    if (it != maps_.end()) return it->second;
    TRI_CHECK(placement.n_ranks() == comm_.size() && placement.n_experts() == config_.n_experts,
              "low-latency dispatch: placement of {} experts over {} ranks, but the group has {} "
              "ranks and the model {} experts",
              placement.n_experts(), placement.n_ranks(), comm_.size(), config_.n_experts);
    const PhysicalExpertMap m = placement.physical_map();
    TRI_CHECK(m.max_copies <= kMaxCopies,
              "low-latency dispatch handles up to {} copies of an expert, the placement has {}",
              kMaxCopies, m.max_copies);
    DeviceExpertMap d;
    d.max_copies = m.max_copies;
    d.slots_per_rank = m.slots_per_rank;
    d.physical = device_tensor(device_, DType::I32, {int64_t(m.physical.size())});
    d.copies = device_tensor(device_, DType::I32, {int64_t(m.copies.size())});
    const cuda::DriverApi& cu = cuda::cu();
    cuda::check(cu.cuStreamSynchronize(device_.stream()), "allocating the expert map");
    cuda::check(cu.cuMemcpyHtoDAsync(device_ptr(d.physical), m.physical.data(),
                                     d.physical.nbytes(), stream_),
                "uploading the expert map");
    cuda::check(cu.cuMemcpyHtoDAsync(device_ptr(d.copies), m.copies.data(), d.copies.nbytes(),
                                     stream_),
                "uploading the expert map");
    return maps_.emplace(&placement, std::move(d)).first->second;
  }

  Communicator& comm_;
  DispatchConfig config_;
  cuda::DeviceContext& device_;
  CUstream stream_;
  int64_t cap_;
  ExchangeRowLayout rows_;
  SharedLayout layout_;
  std::unique_ptr<PeerMemory> peers_;
  int64_t timeout_ns_ = 0;
  Tensor send_counter_, send_slot_, recv_count_, done_, epoch_, status_, peer_addresses_;
  Tensor x_, ids_, weights_;  // the receive rows, reused by every exchange
  std::map<const ExpertPlacement*, DeviceExpertMap> maps_;
  int64_t n_tokens_ = 0;
};

}  // namespace

std::unique_ptr<DispatchCombine> make_low_latency_dispatch_combine(Communicator& comm,
                                                                   const DispatchConfig& config,
                                                                   cuda::DeviceContext& device,
                                                                   CUstream stream,
                                                                   int64_t max_tokens,
                                                                   std::string* why) {
  TRI_CHECK(max_tokens > 0, "low-latency buffers must hold at least one token, got {}",
            max_tokens);
  if (comm.size() > kMaxRanks) {
    *why = fmt::format("the run has {} ranks and low-latency dispatch handles up to {}",
                       comm.size(), kMaxRanks);
    return nullptr;
  }
  const ExchangeRowLayout rows =
      ExchangeRowLayout::of(config.hidden, config.top_k, config.fp8_payload);
  const SharedLayout layout(comm.size(), max_tokens, config.hidden, rows.row_bytes);
  std::unique_ptr<PeerMemory> peers = PeerMemory::open(comm, device, size_t(layout.bytes), why);
  if (!peers) return nullptr;
  return std::make_unique<LowLatencyDispatchCombine>(comm, config, device, stream, max_tokens,
                                                     std::move(peers), layout);
}

}  // namespace trident
