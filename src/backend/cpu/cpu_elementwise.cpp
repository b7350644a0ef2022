// Row-wise and elementwise reference ops: embedding, RMSNorm, SiLU-mul, add.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace trident::cpu {

void read_row(const Tensor& t, int64_t r, float* dst) {
  const int64_t n = t.row_size();
  const int64_t base = r * n;
  switch (t.dtype) {
    case DType::F32: {
      const float* p = t.ptr<float>() + base;
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
      return;
    }
    case DType::BF16: {
      const uint16_t* p = t.ptr<uint16_t>() + base;
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(p[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* p = t.ptr<uint16_t>() + base;
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(p[i]);
      return;
    }
    case DType::F8E4M3: {
      const uint8_t* p = t.ptr<uint8_t>() + base;
      for (int64_t i = 0; i < n; ++i) dst[i] = fp8e4m3_to_f32(p[i]);
      return;
    }
    default: fail("cpu read_row: unsupported dtype {}", dtype_name(t.dtype));
  }
}

void write_row(Tensor& t, int64_t r, const float* src) {
  const int64_t n = t.row_size();
  const int64_t base = r * n;
  switch (t.dtype) {
    case DType::F32: {
      float* p = t.ptr<float>() + base;
      for (int64_t i = 0; i < n; ++i) p[i] = src[i];
      return;
    }
    case DType::BF16: {
      uint16_t* p = t.ptr<uint16_t>() + base;
      for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(src[i]);
      return;
    }
    default: fail("cpu write_row: unsupported output dtype {}", dtype_name(t.dtype));
  }
}

void embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t n = ids.numel();
  const int64_t vocab = table.dim(0);
  TRI_CHECK(out.dim(0) == n && out.row_size() == table.row_size(),
            "embedding: out {} does not fit {} ids of width {}", out.shape_str(), n,
            table.row_size());
  std::vector<float> row(table.row_size());
  for (int64_t t = 0; t < n; ++t) {
    int32_t id = ids.ptr<int32_t>()[t];
    TRI_CHECK(id >= 0 && id < vocab, "embedding: token id {} out of range [0, {})", id, vocab);
    read_row(table, id, row.data());
    write_row(out, t, row.data());
  }
}

static void rms_norm_row(float* x, const float* w, int64_t n, float eps) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  float r = 1.0f / std::sqrt(sum / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = w[i] * (x[i] * r);
}

void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t n = x.row_size();
  TRI_CHECK(w.numel() == n, "rms_norm: weight has {} elements, rows have {}", w.numel(), n);
  std::vector<float> wf(n);
  read_row(w.reshape({1, n}), 0, wf.data());
#pragma omp parallel
  {
    std::vector<float> row(n);
#pragma omp for
    for (int64_t r = 0; r < x.dim(0); ++r) {
      read_row(x, r, row.data());
      rms_norm_row(row.data(), wf.data(), n, eps);
      write_row(out, r, row.data());
    }
  }
}

void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) {
  const int64_t n = x.row_size();
  std::vector<float> wf(n);
  read_row(w.reshape({1, n}), 0, wf.data());
#pragma omp parallel
  {
    std::vector<float> row(n), res(n);
#pragma omp for
    for (int64_t r = 0; r < x.dim(0); ++r) {
      read_row(x, r, row.data());
      read_row(residual, r, res.data());
      for (int64_t i = 0; i < n; ++i) res[i] += row[i];
      write_row(residual, r, res.data());
      // Normalize what was stored, so a BF16 residual is normalized after its rounding, as a
      // framework that keeps the residual in BF16 would.
      read_row(residual, r, res.data());
      rms_norm_row(res.data(), wf.data(), n, eps);
      write_row(out, r, res.data());
    }
  }
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.row_size();
#pragma omp parallel
  {
    std::vector<float> g(n), u(n);
#pragma omp for
    for (int64_t r = 0; r < gate.dim(0); ++r) {
      read_row(gate, r, g.data());
      read_row(up, r, u.data());
      for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      write_row(out, r, g.data());
    }
  }
}

void add(Tensor& a, const Tensor& b) {
  const int64_t n = a.row_size();
  std::vector<float> x(n), y(n);
  for (int64_t r = 0; r < a.dim(0); ++r) {
    read_row(a, r, x.data());
    read_row(b, r, y.data());
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
    write_row(a, r, x.data());
  }
}

}  // namespace trident::cpu
