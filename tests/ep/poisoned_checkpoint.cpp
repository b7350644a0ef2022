#include "poisoned_checkpoint.h"

#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/checkpoint.h"

namespace trident::testing {

namespace fs = std::filesystem;

namespace {

void write_safetensors(const fs::path& path, const Checkpoint& ckpt,
                       const std::vector<std::string>& names) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const std::string& n : names) {
    const Tensor t = ckpt.get(n);
    std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
    header[n] = {{"dtype", std::string(dtype_name(t.dtype))},
                 {"shape", shape},
                 {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  const std::string text = header.dump();
  const uint64_t length = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&length), sizeof(length));
  out << text;
  for (const std::string& n : names) {
    const Tensor t = ckpt.get(n);
    out.write(static_cast<const char*>(t.data), std::streamsize(t.nbytes()));
  }
  TRI_CHECK(out.good(), "writing {} failed", path.string());
}

}  // namespace

PoisonedCheckpoint write_poisoned_checkpoint(const fs::path& from, const fs::path& to,
                                             const std::function<bool(int, int)>& holds_expert) {
  const Checkpoint ckpt = Checkpoint::open(from);
  fs::create_directories(to);
  fs::copy_file(from / "config.json", to / "config.json", fs::copy_options::overwrite_existing);
  std::map<std::string, std::vector<std::string>> shards;  // file -> tensors
  std::map<std::string, bool> poisoned;
  for (const std::string& name : ckpt.names()) {
    int layer = -1, expert = -1;
    if (std::sscanf(name.c_str(), "model.layers.%d.mlp.experts.%d.", &layer, &expert) == 2) {
      const std::string file = fmt::format("expert-{}-{}.safetensors", layer, expert);
      shards[file].push_back(name);
      poisoned[file] = !holds_expert(layer, expert);
    } else {
      shards["shared.safetensors"].push_back(name);
    }
  }
  // The total size keeps the loader's progress report from opening every shard to add them up.
  uint64_t total = 0;
  for (const std::string& name : ckpt.names()) total += ckpt.get(name).nbytes();
  PoisonedCheckpoint made;
  nlohmann::json index = {{"metadata", {{"total_size", total}}},
                          {"weight_map", nlohmann::json::object()}};
  for (const auto& [file, names] : shards) {
    for (const std::string& n : names) index["weight_map"][n] = file;
    if (file == "shared.safetensors") {
      write_safetensors(to / file, ckpt, names);
      continue;
    }
    ++made.expert_shards;
    if (!poisoned[file]) {
      write_safetensors(to / file, ckpt, names);
      continue;
    }
    ++made.poisoned_shards;
    std::ofstream(to / file, std::ios::binary) << "poison: another rank's expert";
  }
  std::ofstream(to / "model.safetensors.index.json") << index.dump(1);
  return made;
}

}  // namespace trident::testing
