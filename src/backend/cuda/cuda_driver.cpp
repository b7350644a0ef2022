#include "backend/cuda/cuda_driver.h"

#include <dlfcn.h>

#include <mutex>

#include "core/error.h"

namespace trident::cuda {

namespace {

using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t,
                                    CUdriverProcAddressQueryResult*);

DriverApi load_driver() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    fail(
        "no CUDA driver: loading libcuda.so.1 failed ({}); the CUDA backend needs an NVIDIA "
        "driver, the CPU backend does not",
        why ? why : "unknown reason");
  }
  auto get_proc = reinterpret_cast<GetProcAddress>(dlsym(lib, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    fail(
        "the CUDA driver is too old: libcuda.so.1 has no cuGetProcAddress_v2; install a driver "
        "for CUDA {}.{} or newer",
        CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10);
  }
  DriverApi api;
  // cuGetProcAddress returns each function in the version matching this header (CUDA_VERSION).
  auto load = [&](const char* name, void** fn) {
    CUdriverProcAddressQueryResult status{};
    CUresult r = get_proc(name, fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || *fn == nullptr || status != CU_GET_PROC_ADDRESS_SUCCESS) {
      fail("the CUDA driver lacks {} for CUDA {}.{} (query status {}); install a newer driver",
           name, CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10, int(status));
    }
  };
#define TRIDENT_CUDA_DRIVER_LOAD(fn) load(#fn, reinterpret_cast<void**>(&api.fn));
  TRIDENT_CUDA_DRIVER_FUNCTIONS(TRIDENT_CUDA_DRIVER_LOAD)
#undef TRIDENT_CUDA_DRIVER_LOAD
  CUresult r = api.cuInit(0);
  if (r != CUDA_SUCCESS) {
    const char* name = "?";
    api.cuGetErrorName(r, &name);
    fail("cuInit failed: {} ({}); is a GPU visible to this process (CUDA_VISIBLE_DEVICES)?", name,
         int(r));
  }
  return api;
}

}  // namespace

const DriverApi& cu() {
  // A failed load is retried on the next call (call_once does not complete on an exception), so
  // the error message is always the real one.
  static std::once_flag once;
  static DriverApi api;
  std::call_once(once, [] { api = load_driver(); });
  return api;
}

bool cuda_available() {
  try {
    int count = 0;
    return cu().cuDeviceGetCount(&count) == CUDA_SUCCESS && count > 0;
  } catch (const Error&) {
    return false;
  }
}

std::string describe(CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  const DriverApi& api = cu();
  if (api.cuGetErrorName(result, &name) != CUDA_SUCCESS) name = "unknown CUresult";
  if (api.cuGetErrorString(result, &text) != CUDA_SUCCESS) text = "no description";
  return fmt::format("{} ({}): {}", name, int(result), text);
}

void check(CUresult result, std::string_view what) {
  if (result != CUDA_SUCCESS) fail("{}: {}", what, describe(result));
}

}  // namespace trident::cuda
