// Where a step's time goes, for benchmarks: the model's forward pass (and the expert-parallel
// exchange) mark where each stage begins, and a timer notes the time there in the order the work
// runs: CUDA events on the backend's stream on a GPU, the steady clock on the CPU (whose ops
// return when done). Nothing is marked unless a timer is set, so a forward pass without one
// runs exactly as before.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace trident {

class Backend;

enum class Stage : uint8_t {
  Attention,  // q/kv projections, RoPE and cache write, MLA, o_proj
  Gate,       // router logits and expert choice
  Dispatch,   // sending tokens to the ranks holding their experts
  Experts,    // the routed experts held here (on one rank: route, permute, GEMMs, weighted sum)
  Combine,    // bringing expert results back to the tokens' ranks
  Mlp,        // the dense layers' MLP and the shared expert
  Rest,       // norms, residual adds, embedding, final norm, lm_head, sampling
};
constexpr int kStageCount = 7;
const char* stage_name(Stage stage);

class StageTimer {
 public:
  struct Interval {
    Stage stage;
    int layer;  // -1: outside the decoder layers
    double seconds;
  };

  virtual ~StageTimer() = default;
  // From here until the next mark (or finish), the work is `stage` of `layer`.
  virtual void mark(Stage stage, int layer) = 0;
  // Ends the last interval, waits for the work marked so far, and returns every interval in
  // mark order; the next mark starts afresh.
  virtual std::vector<Interval> finish() = 0;
};

// A timer for the backend's device: events on a GPU's stream, the steady clock on the CPU.
std::unique_ptr<StageTimer> make_stage_timer(Backend& backend);

}  // namespace trident
