#include "backend/stage_timer.h"

#include <chrono>

#include "backend/backend.h"
#ifdef TRIDENT_CUDA
#include "backend/cuda/cuda_stage_timer.h"
#endif

namespace trident {

const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::Attention: return "attention";
    case Stage::Gate: return "gate";
    case Stage::Dispatch: return "dispatch";
    case Stage::Experts: return "experts";
    case Stage::Combine: return "combine";
    case Stage::Mlp: return "mlp";
    case Stage::Rest: return "rest";
  }
  return "?";
}

namespace {

// CPU ops run to completion before they return, so the clock at a mark is when the stage begins.
class ClockStageTimer final : public StageTimer {
 public:
  void mark(Stage stage, int layer) override {
    marks_.push_back({stage, layer, std::chrono::steady_clock::now()});
  }

  std::vector<Interval> finish() override {
    const auto end = std::chrono::steady_clock::now();
    std::vector<Interval> out;
    for (size_t i = 0; i < marks_.size(); ++i) {
      const auto until = i + 1 < marks_.size() ? marks_[i + 1].at : end;
      out.push_back({marks_[i].stage, marks_[i].layer,
                     std::chrono::duration<double>(until - marks_[i].at).count()});
    }
    marks_.clear();
    return out;
  }

 private:
  struct Mark {
    Stage stage;
    int layer;
    std::chrono::steady_clock::time_point at;
  };
  std::vector<Mark> marks_;
};

}  // namespace

std::unique_ptr<StageTimer> make_stage_timer(Backend& backend) {
#ifdef TRIDENT_CUDA
  if (backend.device() == Device::CUDA) return cuda::make_event_stage_timer(backend);
#endif
  return std::make_unique<ClockStageTimer>();
}

}  // namespace trident
