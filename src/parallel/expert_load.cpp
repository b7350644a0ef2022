#include "parallel/expert_load.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"

namespace trident {

namespace {

constexpr const char* kFormat = "trident-expert-load-v1";

template <class T>
T field(const nlohmann::json& j, const char* name, const std::string& source) {
  TRI_CHECK(j.is_object() && j.contains(name), "{}: the field \"{}\" is missing", source, name);
  try {
    return j.at(name).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: the field \"{}\" has the wrong type ({})", source, name, j.at(name).dump());
  }
}

}  // namespace

ExpertLoad::ExpertLoad(const ModelConfig& config)
    : n_layers_(config.num_hidden_layers),
      n_experts_(config.n_routed_experts),
      top_k_(config.num_experts_per_tok),
      n_groups_(std::max(config.n_group, 1)),
      counts_(size_t(config.num_hidden_layers) * config.n_routed_experts, 0) {
  for (int l = 0; l < n_layers_; ++l)
    if (config.is_moe_layer(l)) moe_layers_.push_back(l);
}

std::vector<double> ExpertLoad::layer_load(int layer) const {
  TRI_CHECK(layer >= 0 && layer < n_layers_, "expert load: layer {} outside [0, {})", layer,
            n_layers_);
  std::vector<double> load(n_experts_);
  for (int e = 0; e < n_experts_; ++e) load[e] = double(count(layer, e));
  return load;
}

int64_t ExpertLoad::tokens() const {
  if (moe_layers_.empty() || top_k_ <= 0) return 0;
  int64_t sum = 0;
  for (int e = 0; e < n_experts_; ++e) sum += count(moe_layers_.front(), e);
  return sum / top_k_;
}

int64_t ExpertLoad::assignments() const {
  return std::accumulate(counts_.begin(), counts_.end(), int64_t(0));
}

void ExpertLoad::check_same_shape(const ExpertLoad& other, const char* what) const {
  TRI_CHECK(other.n_layers_ == n_layers_ && other.n_experts_ == n_experts_,
            "expert load: cannot {} counts of {} layers x {} experts and {} x {}", what, n_layers_,
            n_experts_, other.n_layers_, other.n_experts_);
}

ExpertLoad ExpertLoad::since(const ExpertLoad& earlier) const {
  check_same_shape(earlier, "subtract");
  ExpertLoad d = *this;
  for (size_t i = 0; i < counts_.size(); ++i) d.counts_[i] -= earlier.counts_[i];
  return d;
}

ExpertLoad& ExpertLoad::operator+=(const ExpertLoad& other) {
  check_same_shape(other, "add");
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  return *this;
}

nlohmann::json ExpertLoad::to_json() const {
  nlohmann::json layers = nlohmann::json::array();
  for (int l : moe_layers_)
    layers.push_back(
        {{"layer", l},
         {"counts", std::vector<int64_t>(counts_.begin() + size_t(l) * n_experts_,
                                         counts_.begin() + size_t(l + 1) * n_experts_)}});
  return {{"format", kFormat}, {"n_layers", n_layers_}, {"n_experts", n_experts_},
          {"top_k", top_k_},   {"n_groups", n_groups_}, {"tokens", tokens()},
          {"layers", layers}};
}

ExpertLoad ExpertLoad::from_json(const nlohmann::json& j, const std::string& source) {
  const std::string format = field<std::string>(j, "format", source);
  TRI_CHECK(format == kFormat,
            "{}: format \"{}\" is not an expert load file (\"{}\", as --expert-load-file and GET "
            "/expert_load write it)",
            source, format, kFormat);
  ExpertLoad load;
  load.n_layers_ = field<int>(j, "n_layers", source);
  load.n_experts_ = field<int>(j, "n_experts", source);
  load.top_k_ = field<int>(j, "top_k", source);
  load.n_groups_ = field<int>(j, "n_groups", source);
  TRI_CHECK(load.n_layers_ > 0 && load.n_experts_ > 0 && load.top_k_ > 0 && load.n_groups_ > 0 &&
                load.n_experts_ % load.n_groups_ == 0,
            "{}: {} layers, {} experts, top-{} in {} groups is not a model's routing", source,
            load.n_layers_, load.n_experts_, load.top_k_, load.n_groups_);
  load.counts_.assign(size_t(load.n_layers_) * load.n_experts_, 0);
  const auto layers = field<std::vector<nlohmann::json>>(j, "layers", source);
  for (const nlohmann::json& entry : layers) {
    const int l = field<int>(entry, "layer", source);
    TRI_CHECK(l >= 0 && l < load.n_layers_, "{}: layer {} is outside the model's {} layers", source,
              l, load.n_layers_);
    TRI_CHECK(load.moe_layers_.empty() || load.moe_layers_.back() < l,
              "{}: layer {} is listed out of order or twice", source, l);
    const auto counts = field<std::vector<int64_t>>(entry, "counts", source);
    TRI_CHECK(int(counts.size()) == load.n_experts_, "{}: layer {} has {} counts for {} experts",
              source, l, counts.size(), load.n_experts_);
    for (int e = 0; e < load.n_experts_; ++e) {
      TRI_CHECK(counts[e] >= 0, "{}: layer {} expert {} has a negative count {}", source, l, e,
                counts[e]);
      load.counts_[size_t(l) * load.n_experts_ + e] = counts[e];
    }
    load.moe_layers_.push_back(l);
  }
  TRI_CHECK(!load.moe_layers_.empty(), "{}: no layer has counts", source);
  return load;
}

ExpertLoad ExpertLoad::read(const std::filesystem::path& file) {
  std::ifstream in(file);
  TRI_CHECK(in.good(), "cannot open the expert load file {}", file.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not JSON: {}", file.string(), e.what());
  }
  return from_json(j, file.string());
}

void ExpertLoad::write(const std::filesystem::path& file) const {
  const std::filesystem::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp);
    TRI_CHECK(out.good(), "cannot write the expert load file {}", tmp.string());
    out << to_json().dump() << "\n";
    TRI_CHECK(out.good(), "writing the expert load file {} failed", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  TRI_CHECK(!ec, "cannot move {} to {}: {}", tmp.string(), file.string(), ec.message());
}

double max_over_mean(const std::vector<double>& values) {
  if (values.empty()) return 1.0;
  const double sum = std::accumulate(values.begin(), values.end(), 0.0);
  if (sum <= 0) return 1.0;
  return *std::max_element(values.begin(), values.end()) / (sum / double(values.size()));
}

}  // namespace trident
