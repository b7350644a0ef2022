#include "parallel/rank_info.h"

#include <cstdlib>
#include <initializer_list>

namespace trident {

bool started_by_mpi_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(var)) return true;
  return false;
}

}  // namespace trident
