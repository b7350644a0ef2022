// Which token goes to which rank in a dispatch, worked out on the host from the gate's choices.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/expert_placement.h"

namespace trident {

struct DispatchPlan {
  std::vector<int64_t> send_counts;  // [ranks]: tokens sent to each rank
  // Rows of the send buffer, by destination rank, then by token: the token of each row, and its
  // k expert ids as that rank applies them (elsewhere_id for the experts computed elsewhere).
  std::vector<int32_t> send_token;
  std::vector<int32_t> send_ids;  // [rows, k]
};

// topk_ids: [n_tokens, top_k] global expert ids chosen by the gate on `source_rank`.
DispatchPlan plan_dispatch(const int32_t* topk_ids, int64_t n_tokens, int top_k,
                           const ExpertPlacement& placement, int source_rank);

}  // namespace trident
