#include "parallel/rank_group.h"

#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_world.h"
#ifdef TRIDENT_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace trident {

struct RankGroup::Ranks {
  MpiWorld world;
  std::unique_ptr<MpiCommunicator> host;
  std::unique_ptr<Communicator> device_comm;  // NCCL, for GPU ranks
  Communicator* comm = nullptr;
};

RankGroup::RankGroup(const std::string& device, std::chrono::milliseconds timeout)
    : ranks_(std::make_unique<Ranks>()) {
  Ranks& r = *ranks_;
  // Past MPI's start, a failure on one rank must stop them all: the others would wait for it.
  try {
    r.host = std::make_unique<MpiCommunicator>(r.world.comm(), timeout);
    r.comm = r.host.get();
    if (device == "cpu") return;
    TRI_CHECK(device == "cuda", "unknown device '{}' for a rank (cpu or cuda)", device);
#ifdef TRIDENT_NCCL
    r.device_comm = std::make_unique<NcclCommunicator>(*r.host, r.world.info().local_rank, timeout);
    r.comm = r.device_comm.get();
#else
    fail(
        "GPU ranks exchange tokens over NCCL, and this build has no NCCL (nccl.h was not found "
        "when it was configured); use --device cpu or rebuild with NCCL");
#endif
  } catch (const std::exception& e) {
    r.world.abort(e.what());
  }
}

RankGroup::~RankGroup() = default;

const RankInfo& RankGroup::info() const { return ranks_->world.info(); }
Communicator& RankGroup::comm() { return *ranks_->comm; }
void RankGroup::abort(const std::string& message) const { ranks_->world.abort(message); }

}  // namespace trident
