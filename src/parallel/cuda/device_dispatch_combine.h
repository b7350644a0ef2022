// Dispatch and combine for GPU ranks (the CUDA backend): tokens, expert ids and gate weights stay
// in GPU memory, packed and unpacked by the kernels of kernels/ep_dispatch.py and
// kernels/ep_low_latency.py (rows as in exchange_rows.h). Activations are bf16; the payload is
// FP8 with its scales or bf16 (DispatchConfig::fp8_payload).
#pragma once

#include <cuda.h>

#include <memory>
#include <string>

#include "parallel/dispatch_combine.h"

namespace trident {

namespace cuda {
class DeviceContext;
}

// Kernels run on `stream` (the backend's: device.stream()), the stream the tokens were made on.
//
// Normal mode over a communicator whose payloads live in GPU memory (NCCL between GPU ranks, on
// the same stream): the host plans the rows from the gate's choices, exchanges the counts, and
// the all-to-all moves exactly the rows needed, each token once per destination rank.
std::unique_ptr<DispatchCombine> make_device_normal_dispatch_combine(Communicator& comm,
                                                                     const DispatchConfig& config,
                                                                     cuda::DeviceContext& device,
                                                                     CUstream stream);

// Low-latency mode: every rank writes its tokens straight into its peers' receive buffers
// (PeerMemory) and the kernels wait on flags, with no host work in between, so the whole exchange
// can be captured in a CUDA graph. Buffers hold `max_tokens` tokens per rank; larger batches go
// in rounds (ExpertParallel). Collective; returns null, saying why in `why`, when the ranks cannot
// share GPU memory (not all on one host, or no peer access between their GPUs).
std::unique_ptr<DispatchCombine> make_low_latency_dispatch_combine(Communicator& comm,
                                                                   const DispatchConfig& config,
                                                                   cuda::DeviceContext& device,
                                                                   CUstream stream,
                                                                   int64_t max_tokens,
                                                                   std::string* why);

}  // namespace trident
