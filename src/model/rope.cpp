#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace trident {

namespace {

double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

// The dimension at which a frequency completes `rotations` turns over the original context.
double correction_dim(double rotations, int dim, double base, int max_pos) {
  return dim * std::log(max_pos / (rotations * 2 * M_PI)) / (2 * std::log(base));
}

}  // namespace

RopeTable make_rope_table(const ModelConfig& c) {
  const int dim = c.qk_rope_head_dim;
  const int half = dim / 2;
  RopeTable t;
  t.inv_freq = cpu_tensor(DType::F32, {half});
  float* inv = t.inv_freq.ptr<float>();
  // f32 arithmetic throughout, in the order the reference computes it, so angles agree to the bit
  // as far as libm allows.
  const float base = float(c.rope_theta);
  for (int i = 0; i < half; ++i) {
    float pos_freq = std::pow(base, float(2 * i) / float(dim));
    inv[i] = 1.0f / pos_freq;
  }
  const RopeScaling& y = c.rope_scaling;
  if (y.type != "yarn") return t;

  double low = correction_dim(y.beta_fast, dim, c.rope_theta, y.original_max_position_embeddings);
  double high = correction_dim(y.beta_slow, dim, c.rope_theta, y.original_max_position_embeddings);
  if (y.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  const float factor = float(y.factor);
  for (int i = 0; i < half; ++i) {
    float pos_freq = std::pow(base, float(2 * i) / float(dim));
    float extrapolation = 1.0f / pos_freq;
    float interpolation = 1.0f / (factor * pos_freq);
    float ramp = std::clamp(float((i - low) / (high - low)), 0.0f, 1.0f);
    float extrapolation_weight = 1.0f - ramp;
    inv[i] = interpolation * (1.0f - extrapolation_weight) + extrapolation * extrapolation_weight;
  }
  if (y.attention_factor)
    t.attention_factor = float(*y.attention_factor);
  else if (y.mscale != 0.0 && y.mscale_all_dim != 0.0)
    t.attention_factor = float(yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim));
  else
    t.attention_factor = float(yarn_mscale(y.factor, 1.0));
  return t;
}

}  // namespace trident
