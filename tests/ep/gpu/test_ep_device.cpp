// Dispatch and combine on one GPU (the GPU machine; CI has none): ranks as threads of this
// process, each with its own stream, or as processes sharing the GPU through CUDA IPC. Normal
// mode is checked row for row against the CPU dispatch; low-latency mode against the combine
// worked out on the host, over skewed routing, ranks without tokens, different batch sizes,
// redundant expert copies, FP8 and BF16 payloads, back-to-back exchanges and a missing rank.
//
//   trident_ep_gpu_tests [--gtest_filter=...]
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "ep_gpu_harness.h"
#include "parallel/cuda/device_dispatch_combine.h"
#include "parallel/dispatch_combine.h"
#include "parallel/dispatch_plan.h"

extern char** environ;

namespace {

using namespace trident;
using namespace trident::testing;
using std::chrono::milliseconds;

constexpr int kK = 4;

struct Case {
  const char* name;
  int experts;
  int redundant;
  std::vector<int64_t> tokens;  // per rank
  bool skew;                    // every token to rank 0's experts
  int top_k = kK;
};

const Case kCases[] = {
    {"uneven batches", 16, 0, {9, 3, 17}, false},
    {"ranks without tokens", 16, 0, {0, 7, 0, 2}, false},
    {"skewed to rank 0", 16, 0, {6, 4, 5, 3}, true},
    {"redundant copies", 16, 4, {8, 2, 5, 6}, false},
};

cuda::DeviceContext& gpu() { return cuda::DeviceContext::get(0); }

#define SKIP_WITHOUT_GPU() \
  if (!cuda::cuda_available()) GTEST_SKIP() << "no GPU"

// A stream of this thread's own (a thread starts with no current context: make it current).
CUstream new_stream() {
  gpu().make_current();
  CUstream s = nullptr;
  cuda::check(cuda::cu().cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "creating a stream");
  return s;
}

Batch batch_of(const Case& c, const ExpertPlacement& p, int rank, int H, uint32_t round) {
  return random_batch(c.tokens[rank] + round, H, c.top_k, c.experts, 1000 * round + 17 * rank + H,
                      c.skew ? p.experts_of(0) : std::vector<int>{});
}

Tensor poisoned_device(DType dtype, int64_t rows, int64_t cols) {
  Tensor h = cpu_tensor(dtype, {rows, cols});
  std::memset(h.data, 0xFF, h.nbytes());  // NaN in bf16
  return upload(h, 0);
}

// Normal mode on GPU buffers against the CPU dispatch, row for row, then the combine.
void check_normal_mode(const Case& c, int H, bool fp8) {
  const int R = int(c.tokens.size());
  const ExpertPlacement p = ExpertPlacement::contiguous(c.experts, R, c.redundant);
  ThreadRanks ranks(R);
  std::mutex m;
  std::vector<std::string> failures;
  ranks.run([&](int r) {
    try {
      const Batch b = batch_of(c, p, r, H, 0);
      const DispatchConfig config{H, c.top_k, c.experts, DType::BF16, fp8};
      auto host_comm = ranks.comm(r, Device::CPU);
      auto cpu = make_normal_dispatch_combine(*host_comm, config);
      ReceivedTokens want = cpu->dispatch(b.x, b.ids, b.weights, p, "cpu");
      Tensor want_out = b.T ? cpu_tensor(DType::BF16, {b.T, H}) : Tensor();
      Tensor want_y = want.n ? toy_experts(want.x, want.topk_ids, want.topk_weights, c.experts)
                             : Tensor();
      cpu->combine(want_y, want_out, "cpu");

      auto gpu_comm = ranks.comm(r, Device::CUDA, gpu().stream());
      auto dev = make_device_normal_dispatch_combine(*gpu_comm, config, gpu(), gpu().stream());
      Tensor x = b.T ? upload(b.x, 0) : Tensor(), ids = b.T ? upload(b.ids, 0) : Tensor(),
             w = b.T ? upload(b.weights, 0) : Tensor();
      ReceivedTokens got = dev->dispatch(x, ids, w, p, "gpu");
      std::string diff;
      if (got.n != want.n) diff += fmt::format(" received {} rows, the CPU {};", got.n, want.n);
      Tensor y;
      if (got.n > 0 && got.n == want.n) {
        const Tensor gx = download(got.x), gi = download(got.topk_ids),
                     gw = download(got.topk_weights);
        if (int64_t d = bytes_differing(gx, want.x)) diff += fmt::format(" {} token bytes;", d);
        if (int64_t d = bytes_differing(gi, want.topk_ids)) diff += fmt::format(" {} id bytes;", d);
        if (int64_t d = bytes_differing(gw, want.topk_weights))
          diff += fmt::format(" {} weight bytes;", d);
        y = upload(toy_experts(gx, gi, gw, c.experts), 0);
      }
      Tensor out = b.T ? poisoned_device(DType::BF16, b.T, H) : Tensor();
      dev->combine(y, out, "gpu");
      if (b.T > 0)
        if (int64_t d = bytes_differing(download(out), want_out))
          diff += fmt::format(" {} combined bytes;", d);
      if (!diff.empty()) {
        std::lock_guard<std::mutex> lock(m);
        failures.push_back(fmt::format("rank {}:{}", r, diff));
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(m);
      failures.push_back(fmt::format("rank {}: {}", r, e.what()));
    }
  });
  for (const std::string& f : failures)
    ADD_FAILURE() << c.name << ", hidden " << H << (fp8 ? ", fp8: " : ", bf16: ") << f;
}

TEST(DeviceNormalDispatch, PacksAndUnpacksAsTheCpuDispatchAndCombinesBitForBit) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : kCases)
    for (int H : {7168, 272})
      for (bool fp8 : {true, false}) check_normal_mode(c, H, fp8);
}

// One low-latency exchange per round on every rank (rank `absent` takes no part), checked
// against the host's combine. Returns each rank's error text, empty when all is well.
std::vector<std::string> run_low_latency(const Case& c, int H, bool fp8, int rounds, int absent,
                                         milliseconds timeout, int64_t cap = 32) {
  const int R = int(c.tokens.size());
  const ExpertPlacement p = ExpertPlacement::contiguous(c.experts, R, c.redundant);
  ThreadRanks ranks(R);
  std::vector<std::string> errors(R);
  ranks.run([&](int r) {
    const int K = c.top_k;
    CUstream stream = nullptr;
    std::unique_ptr<Communicator> comm;
    std::unique_ptr<DispatchCombine> ll;
    std::string why;
    try {  // the same failure on every rank returns them all here; one of a kind would hang
      stream = new_stream();
      comm = ranks.comm(r, Device::CUDA, stream, timeout);
      ll = make_low_latency_dispatch_combine(*comm, {H, K, c.experts, DType::BF16, fp8}, gpu(),
                                             stream, cap, &why);
    } catch (const std::exception& e) {
      why = e.what();
    }
    if (!ll) {
      errors[r] = "no low-latency dispatch: " + why;
      return;
    }
    try {
      for (int round = 0; round < rounds && r != absent; ++round) {
        const Batch b = batch_of(c, p, r, H, round);
        Tensor x = b.T ? upload(b.x, 0) : Tensor(), ids = b.T ? upload(b.ids, 0) : Tensor(),
               w = b.T ? upload(b.weights, 0) : Tensor();
        ReceivedTokens got = ll->dispatch(x, ids, w, p, "test");
        const Tensor gx = download(got.x, stream), gi = download(got.topk_ids, stream),
                     gw = download(got.topk_weights, stream);
        // Rows that arrived from each rank: those with an expert here.
        std::vector<int64_t> arrived(R, 0);
        for (int64_t j = 0; j < got.n; ++j)
          for (int k = 0; k < K; ++k)
            if (gi.ptr<int32_t>()[j * K + k] < c.experts) {
              arrived[j / cap]++;
              break;
            }
        Tensor y = upload(toy_experts(gx, gi, gw, c.experts), 0);
        Tensor out = b.T ? poisoned_device(DType::BF16, b.T, H) : Tensor();
        ll->combine(y, out, "test");
        cuda::check(cuda::cu().cuStreamSynchronize(stream), "the exchange");
        if (b.T > 0) {
          const int64_t d = bytes_differing(download(out, stream),
                                            expected_combine(b, p, r, c.experts, fp8));
          if (d != 0) errors[r] += fmt::format(" round {}: {} combined bytes differ;", round, d);
        }
        for (int s = 0; s < R && absent < 0; ++s) {
          const Batch bs = batch_of(c, p, s, H, round);
          const DispatchPlan plan =
              plan_dispatch(bs.T ? bs.ids.ptr<int32_t>() : nullptr, bs.T, K, p, s);
          if (plan.send_counts[r] != arrived[s])
            errors[r] += fmt::format(" round {}: {} rows from rank {}, the plan sends {};", round,
                                     arrived[s], s, plan.send_counts[r]);
        }
      }
    } catch (const std::exception& e) {
      errors[r] += e.what();
    }
    // Every rank keeps its buffers until no peer writes to them any more.
    int64_t done = 1;
    std::vector<int64_t> all(R);
    comm->all_gather(&done, sizeof(done), all.data(), "end");
    try {
      ll->check_peers("the test");
    } catch (const std::exception& e) {
      errors[r] += e.what();
    }
  });
  return errors;
}

TEST(LowLatencyDispatch, DeliversEveryRowAndCombinesAsTheHostDoes) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : kCases)
    for (int H : {7168, 272})
      for (bool fp8 : {true, false}) {
        const auto errors = run_low_latency(c, H, fp8, 2, -1, milliseconds(5000));
        for (size_t r = 0; r < errors.size(); ++r)
          EXPECT_EQ(errors[r], "") << c.name << ", hidden " << H << (fp8 ? ", fp8" : ", bf16")
                                   << ", rank " << r;
      }
}

TEST(LowLatencyDispatch, FullBuffersOfDecodeSizedBatches) {
  SKIP_WITHOUT_GPU();
  // 128 tokens per rank, the buffers' size, with DeepSeek-V3's hidden size and top-8 of 256.
  const Case c{"full buffers", 256, 0, {128, 128, 128, 128}, false, 8};
  const auto errors = run_low_latency(c, 7168, true, 1, -1, milliseconds(5000), 128);
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(LowLatencyDispatch, ARankThatNeverSendsIsNamedAndNobodyWaitsForever) {
  SKIP_WITHOUT_GPU();
  const Case c{"rank 1 absent", 16, 0, {5, 4, 3}, false};
  const auto t0 = std::chrono::steady_clock::now();
  const auto errors = run_low_latency(c, 272, false, 3, 1, milliseconds(300));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (int r : {0, 2})
    EXPECT_NE(errors[r].find("rank 1 did not arrive at a low-latency dispatch"), std::string::npos)
        << "rank " << r << ": " << errors[r];
  // One timeout, not one per exchange: after the first, the kernels stop waiting.
  EXPECT_LT(seconds, 5.0);
}

// Ranks as processes sharing the GPU: this binary re-run with EP_IPC_RANK set.
const char* kIpcRank = "TRIDENT_EP_IPC_RANK";
const char* kIpcFile = "TRIDENT_EP_IPC_FILE";
const Case kIpcCase{"processes", 16, 4, {6, 0, 9}, false};

TEST(LowLatencyDispatchProcess, Child) {
  if (!std::getenv(kIpcRank)) GTEST_SKIP() << "run by RanksAsProcessesShareOneGpuThroughIpc";
  const int r = std::atoi(std::getenv(kIpcRank)), R = int(kIpcCase.tokens.size());
  const int H = 7168;
  FileRanks files(std::getenv(kIpcFile), r, R);
  auto comm = files.comm(milliseconds(20000));
  const ExpertPlacement p = ExpertPlacement::contiguous(kIpcCase.experts, R, kIpcCase.redundant);
  std::string why;
  auto ll = make_low_latency_dispatch_combine(
      *comm, {H, kK, kIpcCase.experts, DType::BF16, true}, gpu(), gpu().stream(), 16, &why);
  if (!ll) {
    if (r == 0) files.set_note(why);
    std::exit(77);
  }
  for (int round = 0; round < 2; ++round) {
    const Batch b = batch_of(kIpcCase, p, r, H, round);
    Tensor x = b.T ? upload(b.x, 0) : Tensor(), ids = b.T ? upload(b.ids, 0) : Tensor(),
           w = b.T ? upload(b.weights, 0) : Tensor();
    ReceivedTokens got = ll->dispatch(x, ids, w, p, "test");
    Tensor y = upload(toy_experts(download(got.x), download(got.topk_ids),
                                  download(got.topk_weights), kIpcCase.experts),
                      0);
    Tensor out = b.T ? poisoned_device(DType::BF16, b.T, H) : Tensor();
    ll->combine(y, out, "test");
    if (b.T > 0) {
      EXPECT_EQ(bytes_differing(download(out), expected_combine(b, p, r, kIpcCase.experts, true)),
                0)
          << "process rank " << r << ", round " << round;
    }
  }
  ll->check_peers("the test");
  std::vector<int64_t> all(R);
  int64_t done = 1;
  comm->all_gather(&done, sizeof(done), all.data(), "end");  // nobody frees memory in use
}

TEST(LowLatencyDispatchProcess, RanksAsProcessesShareOneGpuThroughIpc) {
  SKIP_WITHOUT_GPU();
  if (std::getenv(kIpcRank)) GTEST_SKIP() << "a child";
  const std::filesystem::path file =
      std::filesystem::temp_directory_path() / fmt::format("trident-ep-ipc-{}", getpid());
  FileRanks::create(file);
  const int R = int(kIpcCase.tokens.size());
  std::vector<pid_t> children;
  for (int r = 0; r < R; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    env.push_back(fmt::format("{}={}", kIpcRank, r));
    env.push_back(fmt::format("{}={}", kIpcFile, file.string()));
    std::vector<char*> envp, argv;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe", filter = "--gtest_filter=LowLatencyDispatchProcess.Child";
    argv = {exe.data(), filter.data(), nullptr};
    pid_t pid = 0;
    ASSERT_EQ(posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
    children.push_back(pid);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::vector<int> codes(R, -1);
  for (int r = 0; r < R; ++r) {
    int status = 0;
    while (waitpid(children[r], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        for (pid_t c : children) kill(c, SIGKILL);
        waitpid(children[r], &status, 0);
        ADD_FAILURE() << "process rank " << r << " still runs after 60 s";
        break;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  const std::string note = FileRanks::note(file);
  std::filesystem::remove(file);
  if (codes[0] == 77) GTEST_SKIP() << "the driver does not share GPU memory here: " << note;
  for (int r = 0; r < R; ++r) EXPECT_EQ(codes[r], 0) << "process rank " << r;
}

}  // namespace
