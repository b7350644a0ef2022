// Sampling on the GPU against the CPU sampler (runtime/sampler.cpp): greedy equals its argmax
// exactly, ties to the lower id; every drawn token lies in the set the CPU's rules allow (top-k,
// then top-p, ties at either boundary to the lower ids); and many draws follow the CPU's
// renormalized distribution by a chi-square test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "runtime/sampler.h"

namespace trident::gpu_test {
namespace {

using cuda::SampleRow;

// The tokens sampler.cpp may return for these logits and parameters, with their probabilities:
// its candidates (descending logit, ties to the lower id) cut to top_k, weights
// exp((logit - max) / temperature), then the shortest prefix whose mass reaches top_p.
std::map<int32_t, double> allowed_set(const std::vector<float>& logits, const SampleRow& p) {
  const int V = int(logits.size());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const int k = p.top_k > 0 ? std::min(p.top_k, V) : V;
  const float inv_t = 1.0f / p.temperature, m = logits[order[0]];
  std::vector<double> probs(k);
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += probs[i] = std::exp((logits[order[i]] - m) * inv_t);
  int n = k;
  if (p.top_p < 1.0f) {
    double acc = 0;
    for (int i = 0; i < k; ++i) {
      acc += probs[i] / sum;
      if (acc >= p.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  const double mass = std::accumulate(probs.begin(), probs.begin() + n, 0.0);
  std::map<int32_t, double> set;
  for (int i = 0; i < n; ++i) set[order[i]] = probs[i] / mass;
  return set;
}

// Draws rows.size() tokens, row b from logits row b % distinct rows of `logits`.
std::vector<int32_t> draw(const Tensor& logits_dev, const std::vector<SampleRow>& rows) {
  Tensor ids = poisoned(DType::I32, {int64_t(rows.size())});
  gpu().sample(logits_dev, rows, ids);
  const Tensor host = download(ids);
  return std::vector<int32_t>(host.ptr<int32_t>(), host.ptr<int32_t>() + rows.size());
}

// B copies of one row of logits, on the GPU.
Tensor repeated(const std::vector<float>& row, int64_t B, DType dtype = DType::F32) {
  const int64_t V = int64_t(row.size());
  Tensor t = cpu_tensor(dtype, {B, V});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < V; ++i) {
      if (dtype == DType::F32)
        t.ptr<float>()[b * V + i] = row[i];
      else
        t.ptr<uint16_t>()[b * V + i] = f32_to_bf16(row[i]);
    }
  return gpu().upload(t);
}

std::vector<float> normal_row(int64_t V, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> row(V);
  for (float& v : row) v = normal(rng());
  return row;
}

TEST(CudaSampling, GreedyIsTheCpuArgmaxWithTiesToTheLowerId) {
  SCOPED_TRACE(seed_note());
  for (int64_t V : {1, 7, 4096, 129280}) {
    for (DType dtype : {DType::F32, DType::BF16}) {
      const int64_t B = 24;
      Tensor host = cpu_tensor(DType::F32, {B, V});
      for (int64_t b = 0; b < B; ++b) {
        std::vector<float> row = normal_row(V, 3.0f);
        if (V > 1 && b % 2 == 0) {  // the maximum twice, at random places
          std::uniform_int_distribution<int64_t> at(0, V - 1);
          const float top = *std::max_element(row.begin(), row.end()) + 0.5f;
          row[at(rng())] = top;
          row[at(rng())] = top;
        }
        for (int64_t i = 0; i < V; ++i)
          host.ptr<float>()[b * V + i] = dtype == DType::F32 ? row[i] : bf16_to_f32(f32_to_bf16(row[i]));
      }
      Tensor dev = host;
      if (dtype == DType::BF16) {
        dev = cpu_tensor(DType::BF16, {B, V});
        for (int64_t i = 0; i < B * V; ++i) dev.ptr<uint16_t>()[i] = f32_to_bf16(host.ptr<float>()[i]);
      }
      std::vector<SampleRow> rows(B);
      for (int64_t b = 0; b < B; ++b) {
        rows[b].temperature = b % 3 == 0 ? 0.7f : 0.0f;  // top_k 1 at a temperature is greedy too
        rows[b].top_k = b % 3 == 0 ? 1 : 0;
        rows[b].seed = uint64_t(b);
      }
      const std::vector<int32_t> got = draw(gpu().upload(dev), rows);
      for (int64_t b = 0; b < B; ++b) {
        Sampler cpu_sampler(SamplingParams{0.0f, 0, 1.0f, 0});
        const int32_t want = cpu_sampler.sample(host.ptr<float>() + b * V, int(V)).id;
        EXPECT_EQ(got[b], want) << "V=" << V << " " << dtype_name(dtype) << " row " << b;
      }
    }
  }
}

struct SetCase {
  int64_t V;
  float temperature;
  int top_k;
  float top_p;
  bool ties;  // logits rounded to one decimal: many exact ties, at the boundaries too
};
const SetCase kSetCases[] = {
    {4096, 0.7f, 50, 1.0f, false},  {4096, 1.0f, 0, 0.9f, false},
    {4096, 1.3f, 20, 0.8f, true},   {129280, 1.0f, 0, 0.95f, false},
    {129280, 0.6f, 40, 0.7f, true}, {1000, 2.0f, 999, 0.999f, true},
};

TEST(CudaSampling, DrawsLieInTheCpuTopKTopPSet) {
  SCOPED_TRACE(seed_note());
  for (const SetCase& c : kSetCases) {
    std::vector<float> row = normal_row(c.V, 2.0f);
    if (c.ties)
      for (float& v : row) v = std::round(v * 10.0f) / 10.0f;
    const SampleRow params{c.temperature, c.top_k, c.top_p, 0, 0};
    const std::map<int32_t, double> allowed = allowed_set(row, params);
    const std::string what = fmt::format("V={} T={} top_k={} top_p={}{}", c.V, c.temperature,
                                         c.top_k, c.top_p, c.ties ? " with ties" : "");
    // The host set is the CPU sampler's: its own draws stay inside it.
    Sampler cpu_sampler(SamplingParams{c.temperature, c.top_k, c.top_p, rng()()});
    for (int i = 0; i < 200; ++i)
      ASSERT_TRUE(allowed.count(cpu_sampler.sample(row.data(), int(c.V)).id)) << what;
    const int64_t B = 256;
    std::vector<SampleRow> rows(B, params);
    const uint64_t seed = rng()();
    for (int64_t b = 0; b < B; ++b) {
      rows[b].seed = seed;
      rows[b].step = b;
    }
    const std::vector<int32_t> got = draw(repeated(row, B), rows);
    int64_t outside = 0;
    for (int32_t id : got) outside += !allowed.count(id);
    EXPECT_EQ(outside, 0) << what << ": " << outside << " of " << B << " draws outside the "
                          << allowed.size() << "-token set";
  }
}

TEST(CudaSampling, TiedTopKBoundaryTakesTheLowestIds) {
  std::vector<float> row(50, 0.0f);
  for (int i : {4, 11, 23, 42}) row[i] = 3.0f;  // four tied at the top, top_k 3
  std::vector<SampleRow> rows(400, SampleRow{1.0f, 3, 1.0f, 9, 0});
  for (size_t b = 0; b < rows.size(); ++b) rows[b].step = int64_t(b);
  const std::vector<int32_t> got = draw(repeated(row, int64_t(rows.size())), rows);
  EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), (std::set<int32_t>{4, 11, 23}));
}

// Chi-square statistic of observed counts against probabilities, bins expected under 5 pooled.
std::pair<double, int> chi_square(const std::map<int32_t, int64_t>& counts,
                                  const std::map<int32_t, double>& probs, int64_t n) {
  double stat = 0, pool_obs = 0, pool_exp = 0;
  int bins = 0;
  for (const auto& [token, p] : probs) {
    const double expected = double(n) * p;
    const auto it = counts.find(token);
    const double observed = it == counts.end() ? 0.0 : double(it->second);
    if (expected < 5) {
      pool_obs += observed;
      pool_exp += expected;
      continue;
    }
    stat += (observed - expected) * (observed - expected) / expected;
    ++bins;
  }
  if (pool_exp > 0) {
    stat += (pool_obs - pool_exp) * (pool_obs - pool_exp) / pool_exp;
    ++bins;
  }
  return {stat, bins - 1};
}

// The chi-square quantile at p = 1e-6 (z = 4.75; Wilson-Hilferty): a correct sampler fails once
// in a million runs.
double chi_square_bound(int df) {
  const double z = 4.75, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

TEST(CudaSampling, DrawsFollowTheCpuDistribution) {
  SCOPED_TRACE(seed_note());
  const std::vector<float> row = normal_row(1000, 2.0f);
  const SampleRow params{0.8f, 40, 0.9f, rng()(), 0};
  const std::map<int32_t, double> probs = allowed_set(row, params);
  const int64_t B = 16384, calls = 8, n = B * calls;
  const Tensor logits = repeated(row, B);
  std::map<int32_t, int64_t> counts;
  for (int64_t c = 0; c < calls; ++c) {
    std::vector<SampleRow> rows(B, params);
    for (int64_t b = 0; b < B; ++b) rows[b].step = c * B + b;
    for (int32_t id : draw(logits, rows)) ++counts[id];
  }
  const auto [stat, df] = chi_square(counts, probs, n);
  EXPECT_LT(stat, chi_square_bound(df)) << n << " draws over " << probs.size() << " tokens, df "
                                        << df;
  // The test can fail: the same draws are far from the untempered distribution.
  const auto [wrong, wrong_df] =
      chi_square(counts, allowed_set(row, SampleRow{1.0f, 40, 0.9f, 0, 0}), n);
  EXPECT_GT(wrong, chi_square_bound(wrong_df)) << "the chi-square test cannot tell temperatures";
  ::testing::Test::RecordProperty("chi_square", fmt::format("{:.1f} (df {}, bound {:.1f})", stat, df,
                                                            chi_square_bound(df)));
}

TEST(CudaSampling, ADrawDependsOnlyOnSeedAndStep) {
  const std::vector<float> row = normal_row(500, 1.0f);
  std::vector<SampleRow> rows(64, SampleRow{1.0f, 0, 1.0f, 1234, 7});
  for (size_t b = 32; b < rows.size(); ++b) rows[b].step = int64_t(b);
  const std::vector<int32_t> got = draw(repeated(row, 64), rows);
  for (size_t b = 1; b < 32; ++b) EXPECT_EQ(got[b], got[0]) << "row " << b;
  EXPECT_GT(std::set<int32_t>(got.begin() + 32, got.end()).size(), 8u)
      << "different steps should give different draws";
}

}  // namespace
}  // namespace trident::gpu_test
