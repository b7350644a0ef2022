// GPU ranks' exchanges over NCCL, for the GPU machine (CI has no GPU): run as
//   mpirun -np 2 trident_nccl_exchange [--hang-rank R]
// Each rank sends every peer a block whose size and bytes depend on (sender, receiver), some
// empty, through NcclCommunicator::all_to_all_v, and checks what arrived. With --hang-rank, that
// rank stops answering and the others must stop within the timeout, naming it.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/device_context.h"
#include "parallel/mpi_world.h"
#include "parallel/nccl/nccl_communicator.h"

namespace {

using namespace trident;

size_t block_bytes(int from, int to) {
  return (from + 2 * to) % 3 == 0 ? 0 : 1000 * (1 + from) + 7 * to;
}
uint8_t byte_at(int from, int to, size_t i) { return uint8_t(31 * from + 17 * to + i); }

bool exchange_once(NcclCommunicator& comm, cuda::DeviceContext& ctx) {
  const int R = comm.size(), me = comm.rank();
  std::vector<size_t> send_bytes(R), recv_bytes(R);
  std::vector<uint8_t> send;
  size_t recv_total = 0;
  for (int p = 0; p < R; ++p) {
    send_bytes[p] = block_bytes(me, p);
    recv_bytes[p] = block_bytes(p, me);
    for (size_t i = 0; i < send_bytes[p]; ++i) send.push_back(byte_at(me, p, i));
    recv_total += recv_bytes[p];
  }
  CUdeviceptr d_send = ctx.allocate(send.size() + 1), d_recv = ctx.allocate(recv_total + 1);
  cuda::check(cuda::cu().cuMemcpyHtoDAsync(d_send, send.data(), send.size(), ctx.stream()),
              "upload");
  comm.all_to_all_v(reinterpret_cast<void*>(d_send), send_bytes, reinterpret_cast<void*>(d_recv),
                    recv_bytes, "test exchange");
  std::vector<uint8_t> got(recv_total);
  cuda::check(cuda::cu().cuMemcpyDtoHAsync(got.data(), d_recv, recv_total, ctx.stream()),
              "download");
  cuda::check(cuda::cu().cuStreamSynchronize(ctx.stream()), "download");
  ctx.release(d_send);
  ctx.release(d_recv);
  size_t at = 0;
  for (int p = 0; p < R; ++p)
    for (size_t i = 0; i < recv_bytes[p]; ++i, ++at)
      if (got[at] != byte_at(p, me, i)) {
        std::fprintf(stderr, "rank %d: byte %zu from rank %d is wrong\n", me, i, p);
        return false;
      }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int hang_rank = -1, timeout_ms = 5000;
  CLI::App app{"NCCL exchanges between GPU ranks (run under mpirun)"};
  app.add_option("--hang-rank", hang_rank, "Rank that stops answering after the first exchange");
  app.add_option("--timeout-ms", timeout_ms, "Exchange timeout");
  CLI11_PARSE(app, argc, argv);
  MpiWorld world;
  bool ok = false;
  try {
    MpiCommunicator host(world.comm(), std::chrono::milliseconds(timeout_ms));
    NcclCommunicator comm(host, world.info().local_rank, std::chrono::milliseconds(timeout_ms));
    cuda::DeviceContext& ctx = cuda::DeviceContext::get(world.info().local_rank);
    ok = exchange_once(comm, ctx);
    if (world.info().rank == hang_rank)
      for (;;) pause();
    ok = exchange_once(comm, ctx) && ok;
    int64_t done = 1;
    std::vector<int64_t> all(world.info().size);
    host.all_gather(&done, sizeof(done), all.data(), "end of run");
  } catch (const std::exception& e) {
    world.abort(e.what());
  }
  std::printf("rank %d of %d: NCCL exchanges %s\n", world.info().rank, world.info().size,
              ok ? "match" : "MISMATCH");
  return ok ? 0 : 1;
}
