#include "parallel/dispatch_combine.h"

#include "core/error.h"

namespace trident {

DispatchMode choose_dispatch_mode(DispatchModeChoice choice, int64_t max_tokens_per_rank,
                                  int64_t low_latency_max_tokens, bool low_latency_available) {
  switch (choice) {
    case DispatchModeChoice::Normal:
      return DispatchMode::Normal;
    case DispatchModeChoice::LowLatency:
      TRI_CHECK(low_latency_available,
                "low-latency dispatch was forced but this run has none (it needs GPU ranks on "
                "one host); use --ep-dispatch normal or auto");
      return DispatchMode::LowLatency;
    case DispatchModeChoice::Auto:
      return low_latency_available && max_tokens_per_rank <= low_latency_max_tokens
                 ? DispatchMode::LowLatency
                 : DispatchMode::Normal;
  }
  return DispatchMode::Normal;
}

}  // namespace trident
