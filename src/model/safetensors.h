// One safetensors file, memory-mapped read-only. Opening parses the JSON header and checks every
// tensor's dtype, shape and byte range against the file without touching tensor bytes, so a
// truncated or corrupt file is reported at once and opening costs no memory beyond the header.
// Tensors are CPU views into the read-only mapping (never write through them); each holds the
// file open, so the mapping lives as long as any view does.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section; offsets are relative to its start.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace trident {

class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // A view of the tensor; a scalar (shape []) comes back as shape [1].
  Tensor tensor(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::filesystem::path& path() const { return path_; }
  // Bytes of tensor data (the sum of all tensors' sizes).
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  struct Entry {
    std::optional<DType> dtype;  // empty: a dtype the format knows but Trident does not read
    std::string dtype_name;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte offsets in the data section
  };
  SafetensorsFile() = default;
  void parse_header(const char* header, uint64_t header_bytes, uint64_t data_section_bytes);
  Entry parse_entry(const std::string& name, const nlohmann::json& value) const;

  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const char* data_ = nullptr;
  uint64_t data_bytes_ = 0;
  std::map<std::string, Entry> entries_;
};

// "4.2 GB", "1.1 MB", "512 bytes": sizes in error messages.
std::string format_bytes(uint64_t bytes);

}  // namespace trident
