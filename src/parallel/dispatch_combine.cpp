#include "parallel/dispatch_combine.h"

#include "core/error.h"

namespace trident {

DispatchMode choose_dispatch_mode(DispatchModeChoice choice, int64_t max_tokens_per_rank,
                                  int64_t low_latency_max_tokens) {
  switch (choice) {
    case DispatchModeChoice::Normal:
      return DispatchMode::Normal;
    case DispatchModeChoice::LowLatency:
      TRI_CHECK(kLowLatencyDispatchBuilt,
                "low-latency dispatch runs on GPUs over NVLink and is not in this build; use "
                "--ep-dispatch normal or auto");
      TRI_CHECK(max_tokens_per_rank <= low_latency_max_tokens,
                "low-latency dispatch holds at most {} tokens per rank, a rank has {}; use "
                "--ep-dispatch auto",
                low_latency_max_tokens, max_tokens_per_rank);
      return DispatchMode::LowLatency;
    case DispatchModeChoice::Auto:
      return kLowLatencyDispatchBuilt && max_tokens_per_rank <= low_latency_max_tokens
                 ? DispatchMode::LowLatency
                 : DispatchMode::Normal;
  }
  return DispatchMode::Normal;
}

}  // namespace trident
