#include "parallel/nccl/nccl_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "core/error.h"

namespace trident {

namespace {

NcclApi load_nccl() {
  const char* chosen = std::getenv("TRIDENT_NCCL_LIBRARY");
  const std::string path = chosen ? chosen : "libnccl.so.2";
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    fail(
        "GPU ranks need NCCL, but loading {} failed ({}); put its folder on LD_LIBRARY_PATH or "
        "name the file in TRIDENT_NCCL_LIBRARY",
        path, why ? why : "unknown reason");
  }
  NcclApi api;
  auto load = [&](const char* name, void** fn) {
    *fn = dlsym(lib, name);
    if (*fn == nullptr) fail("{} has no {}: NCCL 2.18 or newer is needed", path, name);
  };
#define TRIDENT_NCCL_LOAD(fn) load(#fn, reinterpret_cast<void**>(&api.fn));
  TRIDENT_NCCL_FUNCTIONS(TRIDENT_NCCL_LOAD)
#undef TRIDENT_NCCL_LOAD
  return api;
}

}  // namespace

const NcclApi& nccl() {
  static std::once_flag once;
  static NcclApi api;
  std::call_once(once, [] { api = load_nccl(); });
  return api;
}

}  // namespace trident
