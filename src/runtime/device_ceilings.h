// The ceilings a roofline floor is taken against, measured on this run's device: the bandwidth of
// a device-to-device copy (bytes read + written per second; on a GPU the driver's copy), and the
// rates of a large FP8 block-scaled GEMM and a large BF16 GEMM of Trident's own kernels, at
// DeepSeek-V3 shapes (so the FP8 ceiling is what our GEMM reaches, below the datasheet peak). On
// the CPU backend the same figures are taken from memcpy and the reference ops at small shapes.
#pragma once

#include <string>

#include "backend/backend.h"
#include "model/random_weights.h"
#include "runtime/step_roofline.h"

namespace trident {

struct MeasuredCeilings {
  DeviceCeilings ceilings;
  std::string copy_how, fp8_how, bf16_how;  // what was timed, for the report
};

// `random` fills the GEMMs' operands (random values draw the power that real ones do).
MeasuredCeilings measure_ceilings(Backend& backend, RandomWeights& random);

}  // namespace trident
