// StageTimer on a GPU: an event recorded on the CUDA backend's stream at every mark.
#pragma once

#include <memory>

#include "backend/stage_timer.h"

namespace trident::cuda {

std::unique_ptr<StageTimer> make_event_stage_timer(Backend& cuda_backend);

}  // namespace trident::cuda
