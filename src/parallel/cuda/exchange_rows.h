// The layout of one dispatched row on GPUs (kernels/ep_rows.py): payload (bf16 values, or e4m3
// codes then one f32 scale per 128 channels), the k expert ids (i32), the k gate weights (f32),
// padded to 16 bytes.
#pragma once

#include <cstdint>

#include "core/error.h"

namespace trident {

struct ExchangeRowLayout {
  int64_t ids_offset = 0;  // bytes from the row's start
  int64_t row_bytes = 0;

  static ExchangeRowLayout of(int64_t hidden, int64_t top_k, bool fp8_payload) {
    TRI_CHECK(hidden % 16 == 0, "GPU expert parallelism needs a hidden size divisible by 16, got {}",
              hidden);
    TRI_CHECK(top_k >= 1 && top_k <= 16, "GPU dispatch handles 1 to 16 experts a token, got {}",
              top_k);
    const int64_t payload = fp8_payload ? hidden + 4 * ((hidden + 127) / 128) : 2 * hidden;
    return {payload, (payload + 8 * top_k + 15) / 16 * 16};
  }
};

}  // namespace trident
