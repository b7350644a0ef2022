// What the expert load balancer gains under skewed routing, on CPU ranks: every token of every
// rank goes to rank 0's experts (the router bias favours them), the ranks prefill the same
// number of tokens step after step, and halfway the balancer moves the experts. Rank 0 prints,
// for the steps before and after, the tokens each rank's experts received, the CPU time each
// rank spent in its experts (a step's critical path with a core per rank) and the step time.
#pragma once

#include "parallel/rank_group.h"

namespace trident::testing {

struct EplbGainArgs {
  int tokens = 256;           // prompt tokens per rank per step
  int steps = 4;              // timed steps before and after the rebalance
  int moe_intermediate = 64;  // the routed experts' size: larger makes them the step's bulk
  int redundant = 0;          // redundant expert copies in all
};

void run_eplb_gain(const EplbGainArgs& args, RankGroup& group);

}  // namespace trident::testing
