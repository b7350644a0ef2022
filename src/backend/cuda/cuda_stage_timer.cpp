#include "backend/cuda/cuda_stage_timer.h"

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

// Events are made once and reused step after step: a step records a hundred or so, and making
// them anew would cost more host time than the marks themselves.
class EventStageTimer final : public StageTimer {
 public:
  explicit EventStageTimer(CudaBackend& backend) : device_(backend.context()) {}

  ~EventStageTimer() override {
    for (CUevent e : events_) cu().cuEventDestroy(e);
  }

  void mark(Stage stage, int layer) override {
    record();
    marks_.push_back({stage, layer});
  }

  std::vector<Interval> finish() override {
    std::vector<Interval> out;
    if (marks_.empty()) return out;
    record();
    check(cu().cuEventSynchronize(events_[used_ - 1]), "waiting for the stage timer's last event");
    for (size_t i = 0; i < marks_.size(); ++i) {
      float ms = 0;
      check(cu().cuEventElapsedTime(&ms, events_[i], events_[i + 1]), "reading a stage's time");
      out.push_back({marks_[i].stage, marks_[i].layer, double(ms) * 1e-3});
    }
    marks_.clear();
    used_ = 0;
    return out;
  }

 private:
  struct Mark {
    Stage stage;
    int layer;
  };

  void record() {
    device_.make_current();
    if (used_ == events_.size()) {
      CUevent e{};
      check(cu().cuEventCreate(&e, CU_EVENT_DEFAULT), "creating a stage timer event");
      events_.push_back(e);
    }
    check(cu().cuEventRecord(events_[used_++], device_.stream()), "recording a stage timer event");
  }

  DeviceContext& device_;
  std::vector<CUevent> events_;
  size_t used_ = 0;
  std::vector<Mark> marks_;
};

}  // namespace

std::unique_ptr<StageTimer> make_event_stage_timer(Backend& cuda_backend) {
  TRI_CHECK(cuda_backend.device() == Device::CUDA,
            "the event stage timer needs the CUDA backend, got another device's");
  return std::make_unique<EventStageTimer>(static_cast<CudaBackend&>(cuda_backend));
}

}  // namespace trident::cuda
