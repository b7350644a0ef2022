// What the GPU expert-parallel tests share: ranks played by threads of one process (host
// collectives through memory, GPU payloads through the host) or by processes (collectives
// through a shared file), random batches, a stand-in for the experts, and the output a rank
// must get back, worked out on the host from first principles.
#pragma once

#include <cuda.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/expert_placement.h"

namespace trident::testing {

// Collectives between threads of this process. Payloads live in host memory or, for
// Device::CUDA, in GPU memory (copied through the host on `stream`).
class ThreadRanks {
 public:
  explicit ThreadRanks(int n);
  // Rank `rank`'s communicator (timeout applies to the GPU exchanges' waits).
  std::unique_ptr<Communicator> comm(int rank, Device payload, CUstream stream = nullptr,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Runs body(rank) on n threads and joins them.
  void run(const std::function<void(int)>& body);

 private:
  friend class ThreadComm;
  int n_;
  std::barrier<> sync_;
  std::vector<std::vector<char>> blocks_;          // each rank's send buffer, on the host
  std::vector<std::vector<size_t>> block_bytes_;  // [rank][peer]
};

// Collectives between processes through a file every rank maps (all_gather only: what
// PeerMemory needs). The creator sizes the file; ranks then open it by path.
class FileRanks {
 public:
  static void create(const std::filesystem::path& path);
  FileRanks(const std::filesystem::path& path, int rank, int n);
  ~FileRanks();
  std::unique_ptr<Communicator> comm(std::chrono::milliseconds timeout);
  // A line of text every rank can read (the parent reads why a child skipped).
  void set_note(const std::string& note);
  static std::string note(const std::filesystem::path& path);

 private:
  friend class FileComm;
  struct Shared;
  Shared* shared_ = nullptr;
  int rank_, n_;
};

struct Batch {
  Tensor x;        // [T, H] bf16, host
  Tensor ids;      // [T, K] i32
  Tensor weights;  // [T, K] f32
  int64_t T = 0;
};

// T tokens of hidden size H; each picks K distinct experts from `allowed` (all E when empty).
Batch random_batch(int64_t T, int H, int K, int E, uint32_t seed,
                   const std::vector<int>& allowed = {});

// The experts' stand-in: expert e multiplies its input by (e + 1) / 8; a row's output is the
// gate-weighted sum over its experts here (ids < E), rounded to bf16. Host tensors.
Tensor toy_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, int E);

// What combine must give rank `source` for its batch under the stand-in experts: for each token,
// the bf16 partial of every rank that computes some of its experts (ExpertPlacement::rank_for),
// on the token as that rank receives it (FP8-quantized and back when fp8), summed in rank order.
Tensor expected_combine(const Batch& b, const ExpertPlacement& placement, int source, int E,
                        bool fp8);

Tensor upload(const Tensor& host, int device);
// After the work queued on `stream` (null: the device's stream).
Tensor download(const Tensor& device_tensor, CUstream stream = nullptr);
// Bytes that differ between two tensors of the same size, -1 when their sizes differ.
int64_t bytes_differing(const Tensor& a, const Tensor& b);

}  // namespace trident::testing
