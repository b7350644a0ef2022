#include "parallel/rank_group.h"

#include "core/error.h"
#ifdef TRIDENT_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace trident {

RankGroup::RankGroup(const std::string& device, std::chrono::milliseconds timeout) {
  // Past MPI's start, a failure on one rank must stop them all: the others would wait for it.
  try {
    host_ = std::make_unique<MpiCommunicator>(world_.comm(), timeout);
    comm_ = host_.get();
    if (device == "cpu") return;
    TRI_CHECK(device == "cuda", "unknown device '{}' for a rank (cpu or cuda)", device);
#ifdef TRIDENT_NCCL
    device_comm_ = std::make_unique<NcclCommunicator>(*host_, world_.info().local_rank, timeout);
    comm_ = device_comm_.get();
#else
    fail(
        "GPU ranks exchange tokens over NCCL, and this build has no NCCL (nccl.h was not found "
        "when it was configured); use --device cpu or rebuild with NCCL");
#endif
  } catch (const std::exception& e) {
    world_.abort(e.what());
  }
}

RankGroup::~RankGroup() = default;

}  // namespace trident
