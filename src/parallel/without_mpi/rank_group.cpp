// RankGroup in a build without MPI (TRIDENT_MPI off): one rank only.
#include "parallel/rank_group.h"

#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace trident {

struct RankGroup::Ranks {};

RankGroup::RankGroup(const std::string&, std::chrono::milliseconds) {
  fail(
      "this trident was built without MPI (TRIDENT_MPI=OFF), so it runs one rank only: drop "
      "--ep / mpirun, or install OpenMPI (libopenmpi-dev) and rebuild");
}

RankGroup::~RankGroup() = default;

const RankInfo& RankGroup::info() const {
  static const RankInfo single;
  return single;
}

Communicator& RankGroup::comm() { fail("this trident was built without MPI: no ranks to talk to"); }

void RankGroup::abort(const std::string& message) const {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::exit(1);
}

}  // namespace trident
