// NCCL, loaded at run time from libnccl.so.2 (or the file TRIDENT_NCCL_LIBRARY names), so that
// binaries built with GPU support still start on machines without NCCL; only GPU ranks need it.
#pragma once

#include <nccl.h>

namespace trident {

#define TRIDENT_NCCL_FUNCTIONS(X) \
  X(ncclGetUniqueId)              \
  X(ncclCommInitRankConfig)       \
  X(ncclCommGetAsyncError)        \
  X(ncclCommAbort)                \
  X(ncclCommDestroy)              \
  X(ncclGroupStart)               \
  X(ncclGroupEnd)                 \
  X(ncclSend)                     \
  X(ncclRecv)                     \
  X(ncclGetErrorString)

struct NcclApi {
#define TRIDENT_NCCL_POINTER(fn) decltype(&::fn) fn = nullptr;
  TRIDENT_NCCL_FUNCTIONS(TRIDENT_NCCL_POINTER)
#undef TRIDENT_NCCL_POINTER
};

// The loaded library; fails, saying where it looked, when there is none.
const NcclApi& nccl();

}  // namespace trident
