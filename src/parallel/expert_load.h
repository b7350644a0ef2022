// Expert load: how many tokens the gate gave each routed expert of each MoE layer (logical
// experts, as the gate chose them, whichever rank computed them). The expert load balancer plans
// placements from it; `--expert-load-file` and GET /expert_load write it as JSON:
//
//   {"format": "trident-expert-load-v1", "n_layers": 61, "n_experts": 256, "top_k": 8,
//    "n_groups": 8, "tokens": 123456,
//    "layers": [{"layer": 3, "counts": [<n_experts integers>]}, ...]}   (MoE layers only)
//
// `trident eplb` reads the file and writes a placement (placement_file.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace trident {

class ExpertLoad {
 public:
  ExpertLoad() = default;
  // All zero, for the model's MoE layers.
  explicit ExpertLoad(const ModelConfig& config);

  int n_layers() const { return n_layers_; }
  int n_experts() const { return n_experts_; }
  int top_k() const { return top_k_; }
  int n_groups() const { return n_groups_; }
  // The layers with routed experts, ascending.
  const std::vector<int>& moe_layers() const { return moe_layers_; }

  // [n_layers, n_experts] row-major; rows of dense layers stay zero.
  std::vector<int64_t>& counts() { return counts_; }
  const std::vector<int64_t>& counts() const { return counts_; }
  int64_t count(int layer, int expert) const {
    return counts_[size_t(layer) * n_experts_ + expert];
  }
  // One layer's counts as the placement policy weighs them.
  std::vector<double> layer_load(int layer) const;
  // Tokens through the MoE layers, each counted once (a layer's counts over top_k).
  int64_t tokens() const;
  // Token-to-expert assignments over every layer: the sum of all counts.
  int64_t assignments() const;

  // What was counted since `earlier` (same model): counts minus earlier's.
  ExpertLoad since(const ExpertLoad& earlier) const;
  ExpertLoad& operator+=(const ExpertLoad& other);

  nlohmann::json to_json() const;
  // `source` names where the JSON came from in errors.
  static ExpertLoad from_json(const nlohmann::json& j, const std::string& source);
  static ExpertLoad read(const std::filesystem::path& file);
  // Written whole or not at all (a temporary file renamed over it).
  void write(const std::filesystem::path& file) const;

 private:
  void check_same_shape(const ExpertLoad& other, const char* what) const;

  int n_layers_ = 0, n_experts_ = 0, top_k_ = 0, n_groups_ = 1;
  std::vector<int> moe_layers_;
  std::vector<int64_t> counts_;
};

// The load figures /metrics shows (serve/metrics.cpp): a few series per layer, not one per expert.
struct ExpertLoadSummary {
  int64_t tokens = 0;       // ExpertLoad::tokens, since start
  int64_t assignments = 0;  // ExpertLoad::assignments, since start
  // Per MoE layer since start: the busiest expert's count over the mean count.
  std::vector<std::pair<int, double>> expert_imbalance;
  // Expert parallelism, per MoE layer since the last rebalance (or start): the busiest rank's
  // expected load over the mean under the placement in use (each expert's count split evenly
  // over its copies). Empty with one rank.
  std::vector<std::pair<int, double>> rank_imbalance;
  int64_t rebalances = 0;        // placements applied while running
  int64_t experts_loaded = 0;    // expert copies loaded by them, over every rank
  double rebalance_seconds = 0;  // time they took, summed
};

// max / mean of the values (1 when they are all zero).
double max_over_mean(const std::vector<double>& values);

}  // namespace trident
