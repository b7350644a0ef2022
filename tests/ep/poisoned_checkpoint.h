// A copy of a checkpoint as one rank of an expert-parallel run should see it, to prove that the
// rank reads only its own routed experts: every routed expert gets a shard file of its own, and
// the shards of the experts this rank does not hold are poison (not safetensors at all), so
// touching any of their tensors fails the load with an error naming the shard.
#pragma once

#include <filesystem>
#include <functional>

namespace trident::testing {

struct PoisonedCheckpoint {
  int expert_shards = 0;    // shard files of routed experts, one per (layer, expert)
  int poisoned_shards = 0;  // of which this rank must never open
};

// Writes `to` (created; config.json is copied) from the checkpoint in `from`.
PoisonedCheckpoint write_poisoned_checkpoint(const std::filesystem::path& from,
                                             const std::filesystem::path& to,
                                             const std::function<bool(int, int)>& holds_expert);

}  // namespace trident::testing
