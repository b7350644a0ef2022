#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_graph.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

namespace trident::cuda {

CudaBackend::CudaBackend(int device_ordinal, double memory_fraction)
    : ops_{DeviceContext::get(device_ordinal), DeviceContext::get(device_ordinal).stream()} {
  if (memory_fraction <= 0) return;
  TRI_CHECK(memory_fraction <= 1.0, "GPU memory fraction {} must be in (0, 1]", memory_fraction);
  // The fraction is this process's share of the device, as vLLM's gpu_memory_utilization is:
  // two servers at 0.45 each fit on one GPU. It must be free when the process starts.
  auto [free_bytes, total_bytes] = ops_.device.device_free_total();
  const size_t ours = ops_.device.pool_usage().reserved;
  const double want = memory_fraction * double(total_bytes);
  const double available = double(free_bytes) + double(ours);
  TRI_CHECK(want <= available,
            "GPU memory fraction {} of CUDA device {} is {:.1f} GB, but only {:.1f} GB of its "
            "{:.1f} GB are free (other processes use the rest); lower --gpu-memory-fraction or "
            "free the GPU",
            memory_fraction, device_ordinal, want / 1e9, available / 1e9, total_bytes / 1e9);
  ops_.device.reserve(size_t(want));
}

CudaBackend::~CudaBackend() {
  // Graphs and their tensors are gone by now (they belong to the backend's users); one still
  // alive is a bug to report, not a reason to throw from a destructor.
  if (graph_workspace_id_ >= 0) {
    try {
      ops_.device.remove_graph_workspace(graph_workspace_id_);
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
  }
}

std::optional<DeviceMemory> CudaBackend::device_memory() {
  DeviceContext::PoolUsage u = ops_.device.pool_usage();
  return DeviceMemory{int64_t(u.reserved), int64_t(u.in_use), int64_t(u.peak_in_use)};
}

void CudaBackend::reset_memory_peak() { ops_.device.reset_peak(); }

Tensor CudaBackend::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  ops_.device.make_current();
  Tensor t = device_tensor(ops_.device, dtype, shape);
  // Zeroed, as the CPU backend's tensors are.
  check(cu().cuMemsetD8Async(device_ptr(t), 0, t.nbytes(), ops_.stream), "zeroing a new tensor");
  return t;
}

Tensor CudaBackend::upload(const Tensor& host) {
  if (host.device == Device::CUDA) {
    TRI_CHECK(host.device_index == ops_.device.ordinal(),
              "upload: tensor {} is on CUDA device {}, this backend runs on device {}",
              host.shape_str(), host.device_index, ops_.device.ordinal());
    return host;
  }
  ops_.device.make_current();
  Tensor t = device_tensor(ops_.device, host.dtype, {host.numel()});
  t.ndim = host.ndim;
  t.shape = host.shape;
  if (host.nbytes() > 0) {
    check(cu().cuMemcpyHtoDAsync(device_ptr(t), host.data, host.nbytes(), ops_.stream),
          fmt::format("uploading {} {} bytes to CUDA device {}", host.shape_str(), host.nbytes(),
                      ops_.device.ordinal()));
  }
  return t;
}

void CudaBackend::to_host(const Tensor& src, void* dst) {
  if (src.device == Device::CPU) {
    std::memcpy(dst, src.data, src.nbytes());
    return;
  }
  ops_.device.make_current();
  if (src.nbytes() > 0) {
    check(cu().cuMemcpyDtoHAsync(dst, device_ptr(src), src.nbytes(), ops_.stream),
          fmt::format("copying {} ({} bytes) from CUDA device {}", src.shape_str(), src.nbytes(),
                      ops_.device.ordinal()));
  }
  synchronize();
}

void CudaBackend::from_host(const void* src, Tensor& dst) {
  expect_device_tensor(ops_, dst, "from_host", "dst",
                       {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64,
                        DType::F8E4M3});
  ops_.device.make_current();
  if (dst.nbytes() == 0) return;
  check(cu().cuMemcpyHtoDAsync(device_ptr(dst), src, dst.nbytes(), ops_.stream),
        fmt::format("copying {} bytes into {} on CUDA device {}", dst.nbytes(), dst.shape_str(),
                    ops_.device.ordinal()));
}

void CudaBackend::reserve_graph_workspace(int64_t bytes) {
  ops_.device.make_current();
  // One tensor of the memory plan, held for the backend's life; a new size replaces it (no graph
  // may be alive then: their addresses are in the old one).
  if (graph_workspace_id_ >= 0) ops_.device.remove_graph_workspace(graph_workspace_id_);
  graph_workspace_id_ = -1;
  graph_workspace_ = Tensor();
  if (bytes <= 0) return;
  graph_workspace_ = device_tensor(ops_.device, DType::U8, {bytes});
  graph_workspace_id_ = ops_.device.add_graph_workspace(device_ptr(graph_workspace_), size_t(bytes));
}

std::unique_ptr<Graph> CudaBackend::capture_graph(const std::function<void()>& ops) {
  TRI_CHECK(graph_workspace_id_ >= 0,
            "capture_graph: no graph workspace on CUDA device {} (reserve_graph_workspace first)",
            ops_.device.ordinal());
  return cuda::capture_graph(ops_.device, graph_workspace_id_, ops);
}

void CudaBackend::synchronize() {
  ops_.device.make_current();
  check(cu().cuStreamSynchronize(ops_.stream),
        fmt::format("waiting for CUDA device {}", ops_.device.ordinal()));
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  ops_.device.make_current();
  cuda::rms_norm(ops_, x, nullptr, w, eps, out);
}

void CudaBackend::add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps,
                               Tensor& out) {
  ops_.device.make_current();
  cuda::rms_norm(ops_, x, &residual, w, eps, out);
}

void CudaBackend::quantize_fp8(const Tensor& x, Tensor& q, Tensor& scales) {
  ops_.device.make_current();
  cuda::quantize_fp8(ops_, x, q, scales);
}

void CudaBackend::fp8_gemm(const Tensor& q, const Tensor& scales, const LinearWeight& w,
                           Tensor& out) {
  ops_.device.make_current();
  TRI_CHECK(w.fp8(), "fp8_gemm: weight {} is {}, not FP8", w.weight.shape_str(),
            dtype_name(w.weight.dtype));
  last_gemm_ = cuda::fp8_gemm(ops_, q, scales, w.weight, w.scale_inv, out,
                              gemm_override_ ? &*gemm_override_ : nullptr);
}

void CudaBackend::linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  ops_.device.make_current();
  expect_device_tensor(ops_, x, "linear", "x", {DType::BF16});
  TRI_CHECK(x.row_size() == w.in_features(),
            "linear: input rows have {} features, weight {} wants {}", x.row_size(),
            w.weight.shape_str(), w.in_features());
  const GemmChoice* forced = gemm_override_ ? &*gemm_override_ : nullptr;
  if (w.fp8()) {
    const int64_t T = x.dim(0), K = x.row_size();
    const int64_t groups = (K + LinearWeight::kBlock - 1) / LinearWeight::kBlock;
    Tensor q = device_tensor(ops_.device, DType::F8E4M3, {T, K});
    Tensor scales = device_tensor(ops_.device, DType::F32, {T, groups});
    cuda::quantize_fp8(ops_, x.reshape({T, K}), q, scales);
    last_gemm_ = cuda::fp8_gemm(ops_, q, scales, w.weight, w.scale_inv, out, forced);
    return;
  }
  if (w.weight.dtype == DType::BF16) {
    last_gemm_ = cuda::bf16_gemm(ops_, x, w.weight, out, forced);
    return;
  }
  fail(
      "not implemented on CUDA yet: linear with a {} weight {} (BF16 and FP8 are supported; "
      "convert the weight when loading)",
      dtype_name(w.weight.dtype), w.weight.shape_str());
}

void CudaBackend::embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  ops_.device.make_current();
  cuda::embedding(ops_, ids, table, out);
}

void CudaBackend::silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  ops_.device.make_current();
  cuda::silu_mul(ops_, gate, up, out);
}

void CudaBackend::add(Tensor& a, const Tensor& b) {
  ops_.device.make_current();
  cuda::add(ops_, a, b);
}

void CudaBackend::mla_rope_cache_write(Tensor& q, const Tensor& kv, const MlaWeights& w,
                                       const MlaParams& p, const RopeTable& rope,
                                       const AttentionMeta& meta, KvLayer& cache) {
  ops_.device.make_current();
  cuda::mla_rope_cache_write(ops_, q, kv, w, p, rope, meta, cache);
}

void CudaBackend::mla_attention(const Tensor& q, const MlaWeights& w, const MlaParams& p,
                                const AttentionMeta& meta, const KvLayer& cache, Tensor& out) {
  ops_.device.make_current();
  last_mla_ = cuda::mla_attention(ops_, q, w, p, meta, cache, out,
                                  mla_override_ ? &*mla_override_ : nullptr);
}

void CudaBackend::moe_gate(const Tensor& logits, const Tensor& bias, const GateParams& p,
                           Tensor& topk_ids, Tensor& topk_weights) {
  ops_.device.make_current();
  cuda::moe_gate(ops_, logits, bias, p, topk_ids, topk_weights);
}

void CudaBackend::moe_experts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                              const ExpertWeights& experts, Tensor& out) {
  ops_.device.make_current();
  last_moe_ = cuda::moe_experts(ops_, expert_tables_, x, topk_ids, topk_weights, experts, out,
                                moe_override_ ? &*moe_override_ : nullptr);
}

void CudaBackend::add_expert_counts(const Tensor& topk_ids, Tensor& counts) {
  ops_.device.make_current();
  cuda::add_expert_counts(ops_, topk_ids, counts);
}

void CudaBackend::sample(const Tensor& logits, std::span<const SampleRow> rows, Tensor& ids) {
  ops_.device.make_current();
  cuda::sample_tokens(ops_, logits, rows, ids);
}

}  // namespace trident::cuda

namespace trident {

std::unique_ptr<Backend> make_cuda_backend(int device_ordinal, double memory_fraction) {
  return std::make_unique<cuda::CudaBackend>(device_ordinal, memory_fraction);
}

}  // namespace trident
