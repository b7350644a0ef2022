// Dispatch and combine: the two exchanges around a MoE layer's routed experts when the experts
// are spread over ranks. Dispatch sends each token, with the gate's choices, to the ranks that
// compute its experts (once per rank, however many of its experts live there); each rank runs its
// experts on what it received, already weighted by the gate; combine brings the partial sums
// back to the tokens' ranks and adds them up.
//
// Two modes, one interface: normal (counts exchanged, then an all-to-all sized to fit; prefill
// and large batches) and low-latency (fixed-size buffers written straight into peers' memory over
// NVLink; decode on GPUs). Every rank uses the same mode in a step: it is chosen from the largest
// batch of any rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/expert_placement.h"

namespace trident {

enum class DispatchMode : uint8_t { Normal, LowLatency };
enum class DispatchModeChoice : uint8_t { Auto, Normal, LowLatency };

// Auto picks low-latency for batches of at most `low_latency_max_tokens` tokens per rank when
// this run has it (GPU ranks on one host); a forced mode is taken whatever the batch size (a
// batch larger than the low-latency buffers goes through in several exchanges). Forcing
// low-latency where the run does not have it is refused earlier (ExpertParallel), saying why.
DispatchMode choose_dispatch_mode(DispatchModeChoice choice, int64_t max_tokens_per_rank,
                                  int64_t low_latency_max_tokens, bool low_latency_available);

struct DispatchConfig {
  int hidden = 0;
  int top_k = 0;
  int n_experts = 0;
  DType activation = DType::F32;
  // Tokens travel as FP8 e4m3 with one f32 scale per 128 channels (DeepSeek's activation
  // quantization) instead of in the activation dtype. Experts whose weights are FP8 quantize
  // their input exactly so, so their results do not change; BF16 experts would lose precision.
  bool fp8_payload = false;
};

// What a rank received: tokens from every rank (rank 0's first), each with its k expert ids and
// weights as this rank must apply them. An id this rank does not compute for that token (another
// rank's expert, or another copy's turn) is `elsewhere_id` = n_experts.
struct ReceivedTokens {
  Tensor x;             // [n, hidden], activation dtype; undefined when n == 0
  Tensor topk_ids;      // [n, k] i32
  Tensor topk_weights;  // [n, k] f32
  int64_t n = 0;
};

class DispatchCombine {
 public:
  virtual ~DispatchCombine() = default;

  virtual DispatchMode mode() const = 0;
  // The most tokens a rank may pass to one dispatch (0: no limit). Larger batches are split
  // into several dispatch-and-combine rounds, the same number on every rank.
  virtual int64_t max_tokens_per_exchange() const { return 0; }

  // x [T, hidden], topk_ids [T, k] (global expert ids), topk_weights [T, k]; T may be 0 (tensors
  // undefined): the rank still takes part. `what` names the layer in error messages.
  virtual ReceivedTokens dispatch(const Tensor& x, const Tensor& topk_ids,
                                  const Tensor& topk_weights, const ExpertPlacement& placement,
                                  std::string_view what) = 0;

  // expert_out [n, hidden]: the weighted expert sums of the last dispatch's received tokens, in
  // their order (undefined when n == 0). out [T, hidden] gets each token's total.
  virtual void combine(const Tensor& expert_out, Tensor& out, std::string_view what) = 0;

  // Throws RankFailure naming a peer that missed a deadline in an exchange since the last call,
  // for modes whose waits run on the GPU and so cannot throw where they happen.
  virtual void check_peers(std::string_view what) {}

  // The placements passed to dispatch so far are gone (the experts moved): whatever was kept of
  // them, such as their maps on the GPU, must be dropped.
  virtual void forget_placements() {}
};

constexpr int elsewhere_id(int n_experts) { return n_experts; }

// Normal mode over any communicator whose payload memory is the host's (CPU ranks over MPI).
std::unique_ptr<DispatchCombine> make_normal_dispatch_combine(Communicator& comm,
                                                              const DispatchConfig& config);

}  // namespace trident
