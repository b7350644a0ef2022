// Expert routing for benchmarks with random weights, steered through the router's correction
// bias (e_score_correction_bias, which noaux_tc adds to the scores only to choose experts) toward
// a target load: even over the experts, or Zipf-like. The steering is the rule DeepSeek-V3 trains
// that bias with (auxiliary-loss-free balancing): after each batch, bias += step * sign(target -
// load), here with a shrinking step and a target that may be uneven. Random weights leave the
// experts' scores with per-expert offsets (the tokens' hidden states share directions), so even
// routing needs the same steering a trained router got.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace trident {

enum class RoutingKind { Uniform, Zipf };
RoutingKind parse_routing_kind(const std::string& name);  // "uniform", "zipf"
const char* routing_kind_name(RoutingKind kind);

// Each expert's share of the choices (summing to 1): even, or Zipf over a random order of the
// experts (the r-th busiest in proportion to r^-s), capped at 1/top_k since a token chooses an
// expert at most once, the excess spread over the others in proportion.
std::vector<double> target_shares(RoutingKind kind, int n_experts, int top_k, double zipf_s,
                                  uint64_t seed);

// The bias rule's step at iteration i (0, 1, ...): large enough at first to move a choice across
// the scores' spread (sigmoid scores of unit-spread logits differ by about 0.2), shrinking so the
// loads settle.
float steering_step(int iteration);
// One application of the rule: bias[e] += step * sign(shares[e] * total - load[e]).
void steer_bias(std::vector<float>& bias, const std::vector<int64_t>& load,
                const std::vector<double>& shares, float step);

// What a load (choices per expert, one layer) looks like.
struct LoadSummary {
  int64_t choices = 0;
  int touched = 0;                // experts chosen at least once
  double max_over_mean = 0;       // the busiest expert's load over the mean load
  double top_decile_share = 0;    // share of choices taken by the busiest tenth of the experts
  double zipf_exponent = 0;       // s of load ~ rank^-s, fitted over the busier half
};
LoadSummary summarize_load(const std::vector<int64_t>& load);

}  // namespace trident
