#include "parallel/dispatch_plan.h"

#include "core/error.h"
#include "parallel/dispatch_combine.h"

namespace trident {

DispatchPlan plan_dispatch(const int32_t* topk_ids, int64_t n_tokens, int top_k,
                           const ExpertPlacement& placement, int source_rank) {
  const int R = placement.n_ranks(), E = placement.n_experts();
  std::vector<int32_t> dest(n_tokens * top_k);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      int e = topk_ids[t * top_k + j];
      TRI_CHECK(e >= 0 && e < E, "dispatch: token {} chose expert {}, outside [0, {})", t, e, E);
      dest[t * top_k + j] = placement.rank_for(e, source_rank, t);
    }
  }
  DispatchPlan plan;
  plan.send_counts.assign(R, 0);
  for (int r = 0; r < R; ++r) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      bool goes = false;
      for (int j = 0; j < top_k; ++j) goes |= dest[t * top_k + j] == r;
      if (!goes) continue;
      plan.send_counts[r]++;
      plan.send_token.push_back(int32_t(t));
      for (int j = 0; j < top_k; ++j)
        plan.send_ids.push_back(dest[t * top_k + j] == r ? topk_ids[t * top_k + j]
                                                         : elsewhere_id(E));
    }
  }
  return plan;
}

}  // namespace trident
