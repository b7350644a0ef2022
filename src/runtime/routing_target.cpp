#include "runtime/routing_target.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"

namespace trident {

RoutingKind parse_routing_kind(const std::string& name) {
  if (name == "uniform") return RoutingKind::Uniform;
  if (name == "zipf") return RoutingKind::Zipf;
  fail("unknown routing '{}' (uniform, zipf)", name);
}

const char* routing_kind_name(RoutingKind kind) {
  return kind == RoutingKind::Uniform ? "uniform" : "zipf";
}

std::vector<double> target_shares(RoutingKind kind, int n_experts, int top_k, double zipf_s,
                                  uint64_t seed) {
  TRI_CHECK(n_experts > 0 && top_k > 0 && top_k <= n_experts,
            "routing target: {} experts, top-{}", n_experts, top_k);
  std::vector<double> share(n_experts, 1.0 / n_experts);
  if (kind == RoutingKind::Uniform) return share;
  TRI_CHECK(zipf_s >= 0, "Zipf exponent must be >= 0, got {}", zipf_s);
  std::vector<int> order(n_experts);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  for (int r = 0; r < n_experts; ++r) share[order[r]] = std::pow(double(r + 1), -zipf_s);
  const double total = std::accumulate(share.begin(), share.end(), 0.0);
  for (double& s : share) s /= total;
  // Cap at 1/top_k, handing the excess to the uncapped experts in proportion, until none exceeds.
  const double cap = 1.0 / top_k;
  for (int round = 0; round < n_experts; ++round) {
    double excess = 0, uncapped = 0;
    for (double s : share) {
      if (s >= cap)
        excess += s - cap;
      else
        uncapped += s;
    }
    if (excess <= 1e-12 || uncapped <= 0) break;
    for (double& s : share) s = s >= cap ? cap : s * (1.0 + excess / uncapped);
  }
  return share;
}

float steering_step(int iteration) { return 0.1f * std::pow(0.85f, float(iteration)); }

void steer_bias(std::vector<float>& bias, const std::vector<int64_t>& load,
                const std::vector<double>& shares, float step) {
  TRI_CHECK(bias.size() == load.size() && load.size() == shares.size(),
            "steer_bias: {} biases, {} loads, {} shares", bias.size(), load.size(), shares.size());
  const double total = double(std::accumulate(load.begin(), load.end(), int64_t(0)));
  for (size_t e = 0; e < bias.size(); ++e) {
    const double want = shares[e] * total, got = double(load[e]);
    if (want > got)
      bias[e] += step;
    else if (want < got)
      bias[e] -= step;
  }
}

LoadSummary summarize_load(const std::vector<int64_t>& load) {
  LoadSummary s;
  if (load.empty()) return s;
  std::vector<int64_t> sorted = load;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  s.choices = std::accumulate(sorted.begin(), sorted.end(), int64_t(0));
  s.touched = int(std::count_if(sorted.begin(), sorted.end(), [](int64_t n) { return n > 0; }));
  if (s.choices == 0) return s;
  const double mean = double(s.choices) / double(sorted.size());
  s.max_over_mean = double(sorted.front()) / mean;
  const size_t decile = std::max<size_t>(1, sorted.size() / 10);
  s.top_decile_share =
      double(std::accumulate(sorted.begin(), sorted.begin() + long(decile), int64_t(0))) /
      double(s.choices);
  // Least squares of log(load) on log(rank) over the busier half's nonzero loads.
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int n = 0;
  for (size_t r = 0; r < std::max<size_t>(2, sorted.size() / 2) && r < sorted.size(); ++r) {
    if (sorted[r] == 0) break;
    const double x = std::log(double(r + 1)), y = std::log(double(sorted[r]));
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
    ++n;
  }
  if (n >= 2 && n * sxx - sx * sx > 0) s.zipf_exponent = -(n * sxy - sx * sy) / (n * sxx - sx * sx);
  return s;
}

}  // namespace trident
