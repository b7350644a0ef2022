// A model directory's weights: model.safetensors.index.json naming the shard of every tensor (the
// layout of DeepSeek's releases), or a single model.safetensors.
//
// Opening reads the index and checks that every shard it lists exists. A shard is mapped when one
// of its tensors is first asked for; its header is then checked (see safetensors.h) together with
// the index's claim about which tensors it holds. Nothing is copied: tensors are views into the
// mappings. Safe to use from several threads; copies share the opened shards.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace trident {

class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir);

  bool has(const std::string& name) const { return shard_of_.count(name) != 0; }
  // The tensor; an error names the directory and the tensor when it is missing.
  Tensor get(const std::string& name) const;
  // The tensor, checked: an error names the file, the tensor, and the expected and found dtype
  // and shape.
  Tensor get(const std::string& name, DType dtype, std::initializer_list<int64_t> shape) const;
  std::vector<std::string> names() const;  // sorted
  // The shard holding the tensor (the directory itself for a name it does not hold).
  std::filesystem::path file_of(const std::string& name) const;
  // Bytes of tensor data in the whole checkpoint: the index's metadata.total_size, else the sum
  // over the shards (which then get opened).
  uint64_t total_bytes() const;

 private:
  struct OpenShards {
    std::mutex mutex;
    std::map<std::string, std::shared_ptr<SafetensorsFile>> by_file;
  };
  const SafetensorsFile& shard(const std::string& file) const;

  std::filesystem::path dir_;
  std::filesystem::path index_;                  // empty for a single model.safetensors
  std::map<std::string, std::string> shard_of_;  // tensor -> shard file name
  std::map<std::string, std::vector<std::string>> tensors_of_;  // shard file name -> tensors
  std::optional<uint64_t> indexed_total_bytes_;
  std::shared_ptr<OpenShards> open_ = std::make_shared<OpenShards>();
};

}  // namespace trident
