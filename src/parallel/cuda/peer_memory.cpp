#include "parallel/cuda/peer_memory.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "core/error.h"

namespace trident {

namespace {

// The driver functions for memory shared across processes, which the backend does not use;
// looked up in the driver the backend already loaded, in the versions of this build's cuda.h.
struct IpcApi {
  decltype(&::cuMemAlloc) mem_alloc = nullptr;
  decltype(&::cuMemFree) mem_free = nullptr;
  decltype(&::cuIpcGetMemHandle) get_handle = nullptr;
  decltype(&::cuIpcOpenMemHandle) open_handle = nullptr;
  decltype(&::cuIpcCloseMemHandle) close_handle = nullptr;
};

const IpcApi& ipc() {
  static std::once_flag once;
  static IpcApi api;
  std::call_once(once, [] {
    cuda::cu();  // loads and initializes the driver, or fails saying why
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    TRI_CHECK(lib != nullptr, "libcuda.so.1 is not loaded although the CUDA driver is");
    using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t,
                                 CUdriverProcAddressQueryResult*);
    auto get_proc = reinterpret_cast<GetProc>(dlsym(lib, "cuGetProcAddress_v2"));
    TRI_CHECK(get_proc != nullptr, "the CUDA driver has no cuGetProcAddress_v2");
    auto load = [&](const char* name, void** fn) {
      CUdriverProcAddressQueryResult status{};
      CUresult r = get_proc(name, fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &status);
      TRI_CHECK(r == CUDA_SUCCESS && *fn != nullptr, "the CUDA driver lacks {} (query status {})",
                name, int(status));
    };
    load("cuMemAlloc", reinterpret_cast<void**>(&api.mem_alloc));
    load("cuMemFree", reinterpret_cast<void**>(&api.mem_free));
    load("cuIpcGetMemHandle", reinterpret_cast<void**>(&api.get_handle));
    load("cuIpcOpenMemHandle", reinterpret_cast<void**>(&api.open_handle));
    load("cuIpcCloseMemHandle", reinterpret_cast<void**>(&api.close_handle));
  });
  return api;
}

// What each rank tells the others about its buffer.
struct RankBuffer {
  char host[64];     // host name and boot id: the same host, not just the same name
  char boot_id[40];
  int64_t pid;
  uint64_t ptr;
  CUipcMemHandle handle;
  int32_t has_handle;
};

// Whether a rank could map every peer's buffer, and if not, why.
struct MapResult {
  int32_t ok;
  char why[200];
};

std::string boot_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  return id;
}

template <size_t N>
void copy_text(char (&dst)[N], const std::string& src) {
  std::memset(dst, 0, N);
  std::memcpy(dst, src.data(), std::min(src.size(), N - 1));
}

}  // namespace

std::unique_ptr<PeerMemory> PeerMemory::open(Communicator& comm, cuda::DeviceContext& device,
                                             size_t bytes, std::string* why) {
  const IpcApi& api = ipc();
  const cuda::DriverApi& cu = cuda::cu();
  device.make_current();
  std::unique_ptr<PeerMemory> m(new PeerMemory);
  m->rank_ = comm.rank();
  m->bytes_ = bytes;
  m->peers_.assign(comm.size(), 0);
  m->mapped_.assign(comm.size(), false);
  CUdeviceptr mine = 0;
  cuda::check(api.mem_alloc(&mine, bytes),
              fmt::format("allocating {} bytes of peer-visible memory on GPU {}", bytes,
                          device.ordinal()));
  m->peers_[m->rank_] = mine;
  cuda::check(cu.cuMemsetD8Async(mine, 0, bytes, device.stream()), "clearing peer memory");
  cuda::check(cu.cuStreamSynchronize(device.stream()), "clearing peer memory");

  RankBuffer me{};
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  copy_text(me.host, host);
  copy_text(me.boot_id, boot_id());
  me.pid = getpid();
  me.ptr = mine;
  me.has_handle = api.get_handle(&me.handle, mine) == CUDA_SUCCESS;
  std::vector<RankBuffer> all(comm.size());
  comm.all_gather(&me, sizeof(me), all.data(), "peer memory: buffers");

  for (int r = 0; r < comm.size(); ++r) {
    if (std::strcmp(all[r].host, all[0].host) != 0 ||
        std::strcmp(all[r].boot_id, all[0].boot_id) != 0) {
      *why = fmt::format("rank {} runs on host {} and rank 0 on {}", r, all[r].host, all[0].host);
      return nullptr;  // the destructor frees this rank's buffer
    }
  }
  MapResult result{1, {}};
  for (int r = 0; r < comm.size() && result.ok; ++r) {
    if (r == m->rank_) continue;
    if (all[r].pid == me.pid) {  // ranks that are threads of this process
      m->peers_[r] = all[r].ptr;
      continue;
    }
    CUresult rc = CUDA_ERROR_NOT_SUPPORTED;
    if (all[r].has_handle)
      rc = api.open_handle(&m->peers_[r], all[r].handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    if (rc != CUDA_SUCCESS) {
      result.ok = 0;
      copy_text(result.why, fmt::format("rank {} could not map rank {}'s GPU memory ({})",
                                        m->rank_, r, cuda::describe(rc)));
      break;
    }
    m->mapped_[r] = true;
  }
  std::vector<MapResult> results(comm.size());
  comm.all_gather(&result, sizeof(result), results.data(), "peer memory: mapped");
  for (const MapResult& r : results) {
    if (!r.ok) {
      *why = r.why;
      return nullptr;
    }
  }
  return m;
}

PeerMemory::~PeerMemory() {
  const IpcApi& api = ipc();
  for (size_t r = 0; r < peers_.size(); ++r)
    if (mapped_[r]) api.close_handle(peers_[r]);
  if (!peers_.empty() && peers_[rank_]) api.mem_free(peers_[rank_]);
}

}  // namespace trident
