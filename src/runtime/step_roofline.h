// The least time a step can take (its roofline floor): the bytes it must move and the FLOPs it
// must do, stage by stage, against ceilings measured on the device. Bytes are the weights a step
// reads (every routed expert that got a token, once) and the latent KV cache it reads and writes;
// activations are left out, so the floor is a lower bound. FLOPs are split by the precision they
// run in (FP8 GEMMs; BF16 attention and router). MLA counts whichever form is cheaper on this
// device for each sequence: absorbed (queries into the latent; what decode wants) or expanded
// (keys and values through kv_b_proj; what a fresh prompt wants, as DeepSeek's prefill does).
// Dispatch and combine move nothing within one rank; across ranks their floor needs the link
// bandwidth, which is not measured here, so it is counted as zero.
#pragma once

#include <array>
#include <vector>

#include "backend/stage_timer.h"
#include "model/config.h"

namespace trident {

struct DeviceCeilings {
  double copy_bytes_per_s = 0;  // device-to-device copy: bytes read + written per second
  double fp8_flops_per_s = 0;   // a large FP8 block-scaled GEMM of ours
  double bf16_flops_per_s = 0;  // a large BF16 GEMM of ours
};

struct Work {
  double bytes = 0, fp8_flops = 0, bf16_flops = 0;

  Work& operator+=(const Work& o);
  Work scaled(double k) const;
  // max(bytes / copy bandwidth, FP8 FLOPs / FP8 rate + BF16 FLOPs / BF16 rate)
  double floor_seconds(const DeviceCeilings& c) const;
};

using StageWork = std::array<Work, kStageCount>;
Work total(const StageWork& w);

// One sequence of a step: `new_tokens` computed now, `context` cached after the step (so
// context - new_tokens were cached before).
struct SequenceShape {
  int new_tokens = 0;
  int context = 0;
};

struct StepWork {
  std::vector<StageWork> layers;  // per decoder layer
  StageWork outside;              // embedding, final norm, lm_head
};

// The work of one step on one rank. routed_rows[l] and experts_touched[l] (MoE layers; 0
// elsewhere): the token-expert pairs this rank computes in layer l, and how many of the experts
// it holds got at least one.
StepWork step_work(const ModelConfig& config, const std::vector<SequenceShape>& sequences,
                   int logit_rows, const std::vector<int64_t>& routed_rows,
                   const std::vector<int>& experts_touched, const DeviceCeilings& ceilings);

}  // namespace trident
