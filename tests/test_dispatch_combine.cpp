// Dispatch and combine in normal mode, with ranks played by threads of this process: the expert
// outputs combined across ranks equal what one rank holding every expert computes, for skewed
// routing, ranks without tokens, different batch sizes, redundant copies and FP8 payloads.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "parallel/dispatch_combine.h"
#include "parallel/dispatch_plan.h"

using namespace trident;

namespace {

// Ranks as threads: each collective publishes every rank's buffers, waits for all, copies, and
// waits again so no buffer is reused while a peer still reads it.
class ThreadGroup {
 public:
  explicit ThreadGroup(int n) : n_(n), sync_(n), send_(n), send_bytes_(n) {}

  class Comm final : public Communicator {
   public:
    Comm(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return g_.n_; }
    Device payload_device() const override { return Device::CPU; }
    std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds(1000); }
    void set_timeout(std::chrono::milliseconds) override {}

    void all_gather(const void* mine, size_t bytes, void* all, std::string_view) override {
      std::vector<size_t> sizes(g_.n_, bytes);
      std::vector<char> repeated;
      for (int r = 0; r < g_.n_; ++r)
        repeated.insert(repeated.end(), static_cast<const char*>(mine),
                        static_cast<const char*>(mine) + bytes);
      all_to_all_v(repeated.data(), sizes, all, sizes, "");
    }
    void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv,
                         std::string_view) override {
      std::vector<size_t> sizes(g_.n_, sizeof(int64_t));
      all_to_all_v(send.data(), sizes, recv.data(), sizes, "");
    }
    void all_to_all_v(const void* send, std::span<const size_t> send_bytes, void* recv,
                      std::span<const size_t> recv_bytes, std::string_view) override {
      g_.send_[rank_] = static_cast<const char*>(send);
      g_.send_bytes_[rank_].assign(send_bytes.begin(), send_bytes.end());
      g_.sync_.arrive_and_wait();
      size_t at = 0;
      for (int peer = 0; peer < g_.n_; ++peer) {
        size_t offset = 0;
        for (int q = 0; q < rank_; ++q) offset += g_.send_bytes_[peer][q];
        EXPECT_EQ(g_.send_bytes_[peer][rank_], recv_bytes[peer])
            << "rank " << rank_ << " from " << peer;
        if (recv_bytes[peer])
          std::memcpy(static_cast<char*>(recv) + at, g_.send_[peer] + offset, recv_bytes[peer]);
        at += recv_bytes[peer];
      }
      g_.sync_.arrive_and_wait();
    }

   private:
    ThreadGroup& g_;
    int rank_;
  };

  // Runs body(rank, comm) on n threads.
  void run(const std::function<void(int, Communicator&)>& body) {
    std::vector<std::thread> threads;
    for (int r = 0; r < n_; ++r)
      threads.emplace_back([&, r] {
        Comm comm(*this, r);
        body(r, comm);
      });
    for (auto& t : threads) t.join();
  }

 private:
  int n_;
  std::barrier<> sync_;
  std::vector<const char*> send_;
  std::vector<std::vector<size_t>> send_bytes_;
};

constexpr int kHidden = 160;  // one full FP8 group of 128 and a short one
constexpr int kInter = 32;
constexpr int kExperts = 8;
constexpr int kTopK = 3;

Tensor random_tensor(std::mt19937& rng, int64_t rows, int64_t cols, float stddev) {
  std::normal_distribution<float> d(0.0f, stddev);
  Tensor t = cpu_tensor(DType::F32, {rows, cols});
  for (int64_t i = 0; i < rows * cols; ++i) t.ptr<float>()[i] = d(rng);
  return t;
}

LinearWeight to_fp8(const Tensor& w) {
  const int64_t out = w.dim(0), in = w.dim(1), ob = (out + 127) / 128, ib = (in + 127) / 128;
  LinearWeight q{cpu_tensor(DType::F8E4M3, {out, in}), cpu_tensor(DType::F32, {ob, ib})};
  for (int64_t bo = 0; bo < ob; ++bo)
    for (int64_t bi = 0; bi < ib; ++bi) {
      float amax = 1e-10f;
      for (int64_t o = bo * 128; o < std::min(out, bo * 128 + 128); ++o)
        for (int64_t i = bi * 128; i < std::min(in, bi * 128 + 128); ++i)
          amax = std::max(amax, std::fabs(w.ptr<float>()[o * in + i]));
      float s = amax / kFp8E4M3Max;
      q.scale_inv.ptr<float>()[bo * ib + bi] = s;
      for (int64_t o = bo * 128; o < std::min(out, bo * 128 + 128); ++o)
        for (int64_t i = bi * 128; i < std::min(in, bi * 128 + 128); ++i)
          q.weight.ptr<uint8_t>()[o * in + i] = f32_to_fp8e4m3(w.ptr<float>()[o * in + i] / s);
    }
  return q;
}

// All experts, with the weights a given seed makes.
ExpertWeights all_experts(bool fp8) {
  std::mt19937 rng(7);
  ExpertWeights w;
  for (int e = 0; e < kExperts; ++e) {
    Tensor g = random_tensor(rng, kInter, kHidden, 0.1f),
           u = random_tensor(rng, kInter, kHidden, 0.1f);
    Tensor d = random_tensor(rng, kHidden, kInter, 0.2f);
    w.gate.push_back(fp8 ? to_fp8(g) : LinearWeight{g, {}});
    w.up.push_back(fp8 ? to_fp8(u) : LinearWeight{u, {}});
    w.down.push_back(fp8 ? to_fp8(d) : LinearWeight{d, {}});
    w.global_to_local.push_back(e);
  }
  return w;
}

// The experts `rank` holds, as a rank that loaded only those would have them.
ExpertWeights experts_of(const ExpertWeights& all, const ExpertPlacement& p, int rank) {
  ExpertWeights w;
  w.global_to_local.assign(kExperts + 1, -1);  // + the "computed elsewhere" id
  for (int e : p.experts_of(rank)) {
    w.global_to_local[e] = int32_t(w.gate.size());
    w.gate.push_back(all.gate[e]);
    w.up.push_back(all.up[e]);
    w.down.push_back(all.down[e]);
  }
  return w;
}

struct Batch {
  Tensor x, ids, weights;
  int64_t T = 0;
};

// T tokens; each picks kTopK distinct experts, from `allowed` when it is not empty.
Batch make_batch(int64_t T, uint32_t seed, const std::vector<int>& allowed = {}) {
  std::mt19937 rng(seed);
  Batch b;
  b.T = T;
  if (T == 0) return b;
  b.x = random_tensor(rng, T, kHidden, 1.0f);
  b.ids = cpu_tensor(DType::I32, {T, kTopK});
  b.weights = cpu_tensor(DType::F32, {T, kTopK});
  std::vector<int> pool = allowed;
  if (pool.empty())
    for (int e = 0; e < kExperts; ++e) pool.push_back(e);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int j = 0; j < kTopK; ++j) {
      b.ids.ptr<int32_t>()[t * kTopK + j] = pool[j];
      b.weights.ptr<float>()[t * kTopK + j] = 0.2f + 0.3f * float(j);
    }
  }
  return b;
}

struct Case {
  int ranks;
  std::vector<int64_t> tokens;  // per rank
  int redundant = 0;
  bool skew = false;  // every token to rank 0's experts
  bool fp8_weights = false;
  bool fp8_payload = false;
  double tolerance = 1e-5;  // relative to the largest output
};

// Runs one MoE layer on every rank, spread and local, and returns the worst relative difference.
double run_case(const Case& c) {
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, c.ranks, c.redundant);
  const ExpertWeights all = all_experts(c.fp8_weights);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  std::vector<double> worst(c.ranks, 0.0);
  ThreadGroup group(c.ranks);
  group.run([&](int rank, Communicator& comm) {
    Batch b = make_batch(c.tokens[rank], 100 + rank,
                         c.skew ? placement.experts_of(0) : std::vector<int>{});
    DispatchConfig config{kHidden, kTopK, kExperts, DType::F32, c.fp8_payload};
    auto dc = make_normal_dispatch_combine(comm, config);
    ReceivedTokens got = dc->dispatch(b.x, b.ids, b.weights, placement, "test layer");
    Tensor y;
    if (got.n > 0) {
      y = cpu_tensor(DType::F32, {got.n, kHidden});
      backend->moe_experts(got.x, got.topk_ids, got.topk_weights, experts_of(all, placement, rank),
                           y);
    }
    Tensor out;
    if (b.T > 0) out = cpu_tensor(DType::F32, {b.T, kHidden});
    dc->combine(y, out, "test layer");
    if (b.T == 0) return;
    Tensor want = cpu_tensor(DType::F32, {b.T, kHidden});
    backend->moe_experts(b.x, b.ids, b.weights, all, want);
    double diff = 0, scale = 1e-30;
    for (int64_t i = 0; i < b.T * kHidden; ++i) {
      diff = std::max(diff, double(std::fabs(out.ptr<float>()[i] - want.ptr<float>()[i])));
      scale = std::max(scale, double(std::fabs(want.ptr<float>()[i])));
    }
    worst[rank] = diff / scale;
  });
  return *std::max_element(worst.begin(), worst.end());
}

}  // namespace

TEST(DispatchPlan, SendsATokenOncePerRankHoweverManyOfItsExpertsLiveThere) {
  ExpertPlacement p = ExpertPlacement::contiguous(8, 2);  // rank 0: 0-3, rank 1: 4-7
  std::vector<int32_t> ids = {0, 1, 2,                    // token 0: all on rank 0
                              1, 5, 6,                    // token 1: both ranks
                              4, 5, 7};                   // token 2: all on rank 1
  DispatchPlan plan = plan_dispatch(ids.data(), 3, 3, p, 0);
  EXPECT_EQ(plan.send_counts, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(plan.send_token, (std::vector<int32_t>{0, 1, 1, 2}));
  const int32_t X = elsewhere_id(8);
  EXPECT_EQ(plan.send_ids, (std::vector<int32_t>{0, 1, 2, 1, X, X, X, 5, 6, 4, 5, 7}));
}

TEST(DispatchPlan, RefusesAnExpertIdOutOfRange) {
  ExpertPlacement p = ExpertPlacement::contiguous(8, 2);
  std::vector<int32_t> ids = {0, 8};
  EXPECT_THROW(plan_dispatch(ids.data(), 1, 2, p, 0), Error);
}

TEST(DispatchCombine, OneRankEqualsTheLocalExperts) { EXPECT_LT(run_case({1, {9}}), 1e-6); }

TEST(DispatchCombine, SpreadOverRanksEqualsAllExpertsOnOneRank) {
  EXPECT_LT(run_case({2, {11, 6}}), 1e-5);
  EXPECT_LT(run_case({4, {5, 9, 3, 12}}), 1e-5);
}

TEST(DispatchCombine, RanksWithoutTokensStillServeTheirExperts) {
  EXPECT_LT(run_case({4, {0, 7, 0, 2}}), 1e-5);
  EXPECT_LT(run_case({2, {0, 0}}), 1e-5);
}

TEST(DispatchCombine, SkewedRoutingToOneRankLeavesTheOthersEmptyHanded) {
  EXPECT_LT(run_case({4, {6, 8, 1, 3}, 0, true}), 1e-5);
}

TEST(DispatchCombine, RedundantCopiesGiveTheSameResult) {
  EXPECT_LT(run_case({2, {10, 7}, 2}), 1e-5);
  EXPECT_LT(run_case({4, {3, 0, 9, 5}, 4}), 1e-5);
}

TEST(DispatchCombine, Fp8PayloadIsExactForFp8Experts) {
  // FP8 experts quantize their input per 128 channels exactly as the payload does, so only the
  // order of the final sums differs.
  EXPECT_LT(run_case({2, {8, 5}, 0, false, true, true}), 1e-5);
}

TEST(DispatchCombine, Fp8PayloadForFloatExpertsStaysWithinFp8Precision) {
  double err = run_case({2, {8, 5}, 0, false, false, true});
  EXPECT_GT(err, 1e-5);  // it is lossy here...
  EXPECT_LT(err, 0.1);   // ...by about e4m3's 3 mantissa bits
}

TEST(DispatchCombine, ModeFollowsTheBatchSizeUnlessForced) {
  EXPECT_EQ(choose_dispatch_mode(DispatchModeChoice::Auto, 128, 128, true),
            DispatchMode::LowLatency);
  EXPECT_EQ(choose_dispatch_mode(DispatchModeChoice::Auto, 129, 128, true), DispatchMode::Normal);
  EXPECT_EQ(choose_dispatch_mode(DispatchModeChoice::Auto, 4, 128, false), DispatchMode::Normal);
  EXPECT_EQ(choose_dispatch_mode(DispatchModeChoice::Normal, 4, 128, true), DispatchMode::Normal);
  // Forced low-latency takes any batch; larger ones go through the buffers in rounds.
  EXPECT_EQ(choose_dispatch_mode(DispatchModeChoice::LowLatency, 4096, 128, true),
            DispatchMode::LowLatency);
}

TEST(DispatchCombine, ForcedLowLatencyModeWithoutGpuRanksSaysWhy) {
  try {
    choose_dispatch_mode(DispatchModeChoice::LowLatency, 4, 128, false);
    FAIL() << "low-latency mode chosen where the run has none";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPU ranks on one host"), std::string::npos) << e.what();
  }
}
