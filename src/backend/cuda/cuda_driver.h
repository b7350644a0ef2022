// The CUDA driver API, loaded at run time from libcuda.so.1 so that the library (and every binary
// linking it) still starts on machines with no NVIDIA driver; only creating a CUDA backend needs
// one. Calls go through `cu()`, e.g. `check(cu().cuCtxSynchronize(), "synchronizing")`.
#pragma once

#include <cuda.h>

#include <string>
#include <string_view>

namespace trident::cuda {

// The driver functions Trident uses. Names go through cuda.h's macros (cuMemAlloc is
// cuMemAlloc_v2), so each pointer has the signature of the version this header declares.
#define TRIDENT_CUDA_DRIVER_FUNCTIONS(X) \
  X(cuInit)                              \
  X(cuGetErrorName)                      \
  X(cuGetErrorString)                    \
  X(cuDeviceGet)                         \
  X(cuDeviceGetCount)                    \
  X(cuDeviceGetName)                     \
  X(cuDeviceGetAttribute)                \
  X(cuDevicePrimaryCtxRetain)            \
  X(cuDeviceGetDefaultMemPool)           \
  X(cuCtxSetCurrent)                     \
  X(cuModuleLoadData)                    \
  X(cuModuleGetFunction)                 \
  X(cuFuncGetAttribute)                  \
  X(cuFuncSetAttribute)                  \
  X(cuLaunchKernelEx)                    \
  X(cuStreamCreate)                      \
  X(cuStreamSynchronize)                 \
  X(cuMemPoolSetAttribute)               \
  X(cuMemPoolGetAttribute)               \
  X(cuMemAllocAsync)                     \
  X(cuMemFreeAsync)                      \
  X(cuMemcpyHtoDAsync)                   \
  X(cuMemcpyDtoHAsync)                   \
  X(cuMemcpyDtoDAsync)                   \
  X(cuMemsetD8Async)                     \
  X(cuMemGetInfo)                        \
  X(cuEventCreate)                       \
  X(cuEventDestroy)                      \
  X(cuEventRecord)                       \
  X(cuEventSynchronize)                  \
  X(cuEventElapsedTime)                  \
  X(cuStreamBeginCapture)                \
  X(cuStreamEndCapture)                  \
  X(cuGraphInstantiateWithFlags)         \
  X(cuGraphLaunch)                       \
  X(cuGraphDestroy)                      \
  X(cuGraphExecDestroy)

struct DriverApi {
#define TRIDENT_CUDA_DRIVER_POINTER(fn) decltype(&::fn) fn = nullptr;
  TRIDENT_CUDA_DRIVER_FUNCTIONS(TRIDENT_CUDA_DRIVER_POINTER)
#undef TRIDENT_CUDA_DRIVER_POINTER
};

// The loaded driver, initialized (cuInit) on first use. Fails, saying why, when there is no
// driver or it is older than the CUDA version Trident was built against.
const DriverApi& cu();

// True when a driver loads and reports at least one GPU; never throws.
bool cuda_available();

// "CUDA_ERROR_OUT_OF_MEMORY (2): out of memory"
std::string describe(CUresult result);

// Throws trident::Error "<what>: <describe(result)>" unless result is CUDA_SUCCESS.
void check(CUresult result, std::string_view what);

}  // namespace trident::cuda
