#include "ep_gpu_harness.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <thread>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

namespace trident::testing {

namespace {

Tensor like(const Tensor& t, Device device, int index, void* data) {
  Tensor c = t;
  c.device = device;
  c.device_index = index;
  c.data = data;
  c.owner.reset();
  return c;
}

}  // namespace

class ThreadComm final : public Communicator {
 public:
  ThreadComm(ThreadRanks& g, int rank, Device payload, CUstream stream,
             std::chrono::milliseconds timeout)
      : g_(g), rank_(rank), payload_(payload), stream_(stream), timeout_(timeout) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.n_; }
  Device payload_device() const override { return payload_; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) override { timeout_ = t; }

  void all_gather(const void* mine, size_t bytes, void* all, std::string_view) override {
    std::vector<size_t> sizes(g_.n_, bytes);
    std::vector<char> repeated;
    for (int r = 0; r < g_.n_; ++r)
      repeated.insert(repeated.end(), static_cast<const char*>(mine),
                      static_cast<const char*>(mine) + bytes);
    exchange(repeated.data(), sizes, all, sizes, false);
  }
  void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv,
                       std::string_view) override {
    std::vector<size_t> sizes(g_.n_, sizeof(int64_t));
    exchange(send.data(), sizes, recv.data(), sizes, false);
  }
  void all_to_all_v(const void* send, std::span<const size_t> send_bytes, void* recv,
                    std::span<const size_t> recv_bytes, std::string_view) override {
    exchange(send, send_bytes, recv, recv_bytes, payload_ == Device::CUDA);
  }

 private:
  void exchange(const void* send, std::span<const size_t> send_bytes, void* recv,
                std::span<const size_t> recv_bytes, bool on_gpu) {
    size_t total = 0, recv_total = 0;
    for (size_t b : send_bytes) total += b;
    for (size_t b : recv_bytes) recv_total += b;
    std::vector<char>& mine = g_.blocks_[rank_];
    mine.resize(total);
    const cuda::DriverApi* cu = on_gpu ? &cuda::cu() : nullptr;
    if (on_gpu && total)
      cuda::check(cu->cuMemcpyDtoHAsync(mine.data(), CUdeviceptr(send), total, stream_), "D2H");
    if (on_gpu) cuda::check(cu->cuStreamSynchronize(stream_), "D2H");
    if (!on_gpu && total) std::memcpy(mine.data(), send, total);
    g_.block_bytes_[rank_].assign(send_bytes.begin(), send_bytes.end());
    g_.sync_.arrive_and_wait();
    std::vector<char> in(recv_total);
    size_t at = 0;
    for (int peer = 0; peer < g_.n_; ++peer) {
      size_t offset = 0;
      for (int q = 0; q < rank_; ++q) offset += g_.block_bytes_[peer][q];
      TRI_CHECK(g_.block_bytes_[peer][rank_] == recv_bytes[peer],
                "rank {} expects {} bytes from rank {}, which sends {}", rank_, recv_bytes[peer],
                peer, g_.block_bytes_[peer][rank_]);
      std::memcpy(in.data() + at, g_.blocks_[peer].data() + offset, recv_bytes[peer]);
      at += recv_bytes[peer];
    }
    g_.sync_.arrive_and_wait();
    if (on_gpu && recv_total) {
      cuda::check(cu->cuMemcpyHtoDAsync(CUdeviceptr(recv), in.data(), recv_total, stream_), "H2D");
      cuda::check(cu->cuStreamSynchronize(stream_), "H2D");
    }
    if (!on_gpu && recv_total) std::memcpy(recv, in.data(), recv_total);
  }

  ThreadRanks& g_;
  int rank_;
  Device payload_;
  CUstream stream_;
  std::chrono::milliseconds timeout_;
};

ThreadRanks::ThreadRanks(int n) : n_(n), sync_(n), blocks_(n), block_bytes_(n) {}

std::unique_ptr<Communicator> ThreadRanks::comm(int rank, Device payload, CUstream stream,
                                                std::chrono::milliseconds timeout) {
  return std::make_unique<ThreadComm>(*this, rank, payload, stream, timeout);
}

void ThreadRanks::run(const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n_; ++r) threads.emplace_back([&, r] { body(r); });
  for (auto& t : threads) t.join();
}

// The shared file: a counter of arrivals, two generations of slots, and a note.
struct FileRanks::Shared {
  static constexpr int kMaxRanks = 8;
  static constexpr size_t kSlot = 4096;
  std::atomic<int64_t> arrived;
  char slots[2][kMaxRanks][kSlot];
  char note[512];
};

void FileRanks::create(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  TRI_CHECK(fd >= 0 && ftruncate(fd, sizeof(Shared)) == 0, "cannot create {}", path.string());
  ::close(fd);
}

FileRanks::FileRanks(const std::filesystem::path& path, int rank, int n) : rank_(rank), n_(n) {
  TRI_CHECK(n <= Shared::kMaxRanks, "at most {} process ranks", Shared::kMaxRanks);
  const int fd = ::open(path.c_str(), O_RDWR);
  TRI_CHECK(fd >= 0, "cannot open {}", path.string());
  void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  TRI_CHECK(p != MAP_FAILED, "cannot map {}", path.string());
  shared_ = static_cast<Shared*>(p);
}

FileRanks::~FileRanks() { munmap(shared_, sizeof(Shared)); }

void FileRanks::set_note(const std::string& note) {
  std::strncpy(shared_->note, note.c_str(), sizeof(shared_->note) - 1);
}

std::string FileRanks::note(const std::filesystem::path& path) {
  FileRanks f(path, 0, 1);
  return std::string(f.shared_->note);
}

class FileComm final : public Communicator {
 public:
  FileComm(FileRanks& f, std::chrono::milliseconds timeout) : f_(f), timeout_(timeout) {}
  int rank() const override { return f_.rank_; }
  int size() const override { return f_.n_; }
  Device payload_device() const override { return Device::CPU; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) override { timeout_ = t; }
  void all_gather(const void* mine, size_t bytes, void* all, std::string_view what) override {
    TRI_CHECK(bytes <= FileRanks::Shared::kSlot, "all_gather of {} bytes", bytes);
    const int64_t generation = ++generation_;
    auto& slots = f_.shared_->slots[generation % 2];
    std::memcpy(slots[f_.rank_], mine, bytes);
    f_.shared_->arrived.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (f_.shared_->arrived.load() < generation * f_.n_) {
      if (std::chrono::steady_clock::now() > deadline)
        throw RankFailure(fmt::format("a process rank did not arrive at '{}'", what));
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    for (int r = 0; r < f_.n_; ++r)
      std::memcpy(static_cast<char*>(all) + r * bytes, slots[r], bytes);
  }
  void exchange_counts(std::span<const int64_t>, std::span<int64_t>, std::string_view) override {
    fail("process ranks exchange no counts in these tests");
  }
  void all_to_all_v(const void*, std::span<const size_t>, void*, std::span<const size_t>,
                    std::string_view) override {
    fail("process ranks run no all-to-all in these tests");
  }

 private:
  FileRanks& f_;
  std::chrono::milliseconds timeout_;
  int64_t generation_ = 0;
};

std::unique_ptr<Communicator> FileRanks::comm(std::chrono::milliseconds timeout) {
  return std::make_unique<FileComm>(*this, timeout);
}

Batch random_batch(int64_t T, int H, int K, int E, uint32_t seed, const std::vector<int>& allowed) {
  std::mt19937 rng(seed);
  Batch b;
  b.T = T;
  if (T == 0) return b;
  b.x = cpu_tensor(DType::BF16, {T, H});
  b.ids = cpu_tensor(DType::I32, {T, K});
  b.weights = cpu_tensor(DType::F32, {T, K});
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  for (int64_t i = 0; i < T * H; ++i) b.x.ptr<uint16_t>()[i] = f32_to_bf16(normal(rng));
  std::vector<int> pool = allowed;
  if (pool.empty())
    for (int e = 0; e < E; ++e) pool.push_back(e);
  TRI_CHECK(int(pool.size()) >= K, "{} distinct experts from a pool of {}", K, pool.size());
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int j = 0; j < K; ++j) {
      b.ids.ptr<int32_t>()[t * K + j] = pool[j];
      b.weights.ptr<float>()[t * K + j] = uniform(rng);
    }
  }
  return b;
}

namespace {

float expert_scale(const int32_t* ids, const float* w, int K, int E,
                   const std::function<bool(int)>& counts) {
  float s = 0;
  for (int k = 0; k < K; ++k)
    if (ids[k] < E && counts(k)) s += w[k] * float(ids[k] + 1) / 8.0f;
  return s;
}

}  // namespace

Tensor toy_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, int E) {
  const int64_t n = x.dim(0), H = x.row_size(), K = ids.row_size();
  Tensor out = cpu_tensor(DType::BF16, {n, H});
  std::vector<float> row(H);
  for (int64_t i = 0; i < n; ++i) {
    const float s = expert_scale(ids.ptr<int32_t>() + i * K, weights.ptr<float>() + i * K,
                                 int(K), E, [](int) { return true; });
    cpu::read_row(x, i, row.data());
    for (float& v : row) v *= s;
    cpu::write_row(out, i, row.data());
  }
  return out;
}

Tensor expected_combine(const Batch& b, const ExpertPlacement& placement, int source, int E,
                        bool fp8) {
  const int64_t H = b.x.row_size(), K = b.ids.row_size();
  Tensor out = cpu_tensor(DType::BF16, {b.T, H});
  Tensor partial = cpu_tensor(DType::BF16, {1, H});
  std::vector<float> x(H), q(H), scales((H + 127) / 128), sum(H), p(H);
  for (int64_t t = 0; t < b.T; ++t) {
    cpu::read_row(b.x, t, x.data());
    if (fp8) {  // the payload's quantization, and the receiver's dequantization to bf16
      cpu::quantize_row_fp8(x.data(), H, q.data(), scales.data());
      for (int64_t c = 0; c < H; ++c) x[c] = bf16_to_f32(f32_to_bf16(q[c] * scales[c / 128]));
    }
    const int32_t* ids = b.ids.ptr<int32_t>() + t * K;
    const float* w = b.weights.ptr<float>() + t * K;
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (int d = 0; d < placement.n_ranks(); ++d) {
      auto on_d = [&](int k) { return placement.rank_for(ids[k], source, t) == d; };
      bool any = false;
      for (int k = 0; k < K; ++k) any |= on_d(k);
      if (!any) continue;
      const float s = expert_scale(ids, w, int(K), E, on_d);
      for (int64_t c = 0; c < H; ++c) p[c] = x[c] * s;
      cpu::write_row(partial, 0, p.data());
      cpu::read_row(partial, 0, p.data());
      for (int64_t c = 0; c < H; ++c) sum[c] += p[c];
    }
    cpu::write_row(out, t, sum.data());
  }
  return out;
}

Tensor upload(const Tensor& host, int device) {
  cuda::DeviceContext& ctx = cuda::DeviceContext::get(device);
  CUdeviceptr p = ctx.allocate(host.nbytes());
  Tensor t = like(host, Device::CUDA, device, reinterpret_cast<void*>(p));
  t.owner = std::shared_ptr<void>(t.data, [&ctx](void* q) { ctx.release(CUdeviceptr(q)); });
  cuda::check(cuda::cu().cuMemcpyHtoDAsync(p, host.data, host.nbytes(), ctx.stream()), "upload");
  cuda::check(cuda::cu().cuStreamSynchronize(ctx.stream()), "upload");
  return t;
}

Tensor download(const Tensor& d, CUstream stream) {
  auto bytes = std::shared_ptr<char[]>(new char[d.nbytes()]);
  Tensor h = like(d, Device::CPU, 0, bytes.get());
  h.owner = bytes;
  if (!stream) stream = cuda::DeviceContext::get(d.device_index).stream();
  cuda::check(cuda::cu().cuMemcpyDtoHAsync(h.data, CUdeviceptr(d.data), d.nbytes(), stream),
              "download");
  cuda::check(cuda::cu().cuStreamSynchronize(stream), "download");
  return h;
}

int64_t bytes_differing(const Tensor& a, const Tensor& b) {
  if (a.nbytes() != b.nbytes()) return -1;
  int64_t n = 0;
  for (size_t i = 0; i < a.nbytes(); ++i)
    n += static_cast<const char*>(a.data)[i] != static_cast<const char*>(b.data)[i];
  return n;
}

}  // namespace trident::testing
