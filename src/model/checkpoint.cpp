#include "model/checkpoint.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace trident {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// What a directory without a checkpoint holds instead, for the error message.
std::string describe_contents(const fs::path& dir) {
  std::vector<std::string> names;
  bool torch_bin = false;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    torch_bin |= e.path().extension() == ".bin" || e.path().extension() == ".pt";
    names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) return "it is empty";
  std::string s = fmt::format(
      "it holds {}",
      fmt::join(names.begin(), names.begin() + std::min<size_t>(names.size(), 6), ", "));
  if (names.size() > 6) s += fmt::format(" and {} more", names.size() - 6);
  if (torch_bin) s += "; Trident reads safetensors only, so convert the PyTorch weights first";
  return s;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir) {
  std::error_code ec;
  TRI_CHECK(fs::is_directory(dir, ec),
            "checkpoint directory {} does not exist or is not a directory", dir.string());
  Checkpoint c;
  c.dir_ = dir;
  if (fs::exists(dir / kIndexName)) {
    c.index_ = dir / kIndexName;
    std::ifstream in(c.index_);
    TRI_CHECK(in, "cannot read {}", c.index_.string());
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::parse_error& e) {
      fail("{} is not valid JSON ({}); download it again", c.index_.string(), e.what());
    }
    TRI_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
              "{} has no weight_map object naming the shard of every tensor", c.index_.string());
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      TRI_CHECK(file.is_string() && !file.get<std::string>().empty() &&
                    fs::path(file.get<std::string>()).filename() == file.get<std::string>(),
                "{} maps tensor {} to {}, which is not a file name in the checkpoint directory",
                c.index_.string(), tensor, file.dump());
      c.shard_of_[tensor] = file.get<std::string>();
      c.tensors_of_[file.get<std::string>()].push_back(tensor);
    }
    TRI_CHECK(!c.shard_of_.empty(), "{} maps no tensors to shards", c.index_.string());
    if (j.contains("metadata") && j["metadata"].is_object() &&
        j["metadata"].contains("total_size") && j["metadata"]["total_size"].is_number_unsigned())
      c.indexed_total_bytes_ = j["metadata"]["total_size"].get<uint64_t>();

    std::vector<std::string> missing;
    for (const auto& [file, tensors] : c.tensors_of_)
      if (!fs::is_regular_file(dir / file, ec)) missing.push_back(file);
    TRI_CHECK(missing.empty(), "checkpoint shard {} listed in {} is missing{}; download it again",
              (dir / missing.front()).string(), c.index_.string(),
              missing.size() > 1 ? fmt::format(" (and {} more: {})", missing.size() - 1,
                                               fmt::join(missing.begin() + 1, missing.end(), ", "))
                                 : "");
  } else if (fs::exists(dir / kSingleName)) {
    auto shard = SafetensorsFile::open(dir / kSingleName);
    for (const std::string& n : shard->names()) {
      c.shard_of_[n] = kSingleName;
      c.tensors_of_[kSingleName].push_back(n);
    }
    c.open_->by_file[kSingleName] = std::move(shard);
  } else {
    fail("{} holds no safetensors checkpoint (neither {} nor {}): {}", dir.string(), kIndexName,
         kSingleName, describe_contents(dir));
  }
  return c;
}

const SafetensorsFile& Checkpoint::shard(const std::string& file) const {
  std::lock_guard<std::mutex> lock(open_->mutex);
  auto it = open_->by_file.find(file);
  if (it != open_->by_file.end()) return *it->second;
  auto opened = SafetensorsFile::open(dir_ / file);
  std::vector<std::string> absent;
  for (const std::string& t : tensors_of_.at(file))
    if (!opened->has(t)) absent.push_back(t);
  TRI_CHECK(absent.empty(),
            "{} maps tensor {} to {}, which does not contain it{}; the index and the shards come "
            "from different downloads?",
            index_.string(), absent.front(), (dir_ / file).string(),
            absent.size() > 1
                ? fmt::format(" (nor {} more tensors the index places there)", absent.size() - 1)
                : "");
  return *open_->by_file.emplace(file, std::move(opened)).first->second;
}

Tensor Checkpoint::get(const std::string& name) const {
  auto it = shard_of_.find(name);
  TRI_CHECK(it != shard_of_.end(),
            "checkpoint {} has no tensor {} (it holds {} tensors); does config.json describe this "
            "checkpoint?",
            dir_.string(), name, shard_of_.size());
  return shard(it->second).tensor(name);
}

Tensor Checkpoint::get(const std::string& name, DType dtype,
                       std::initializer_list<int64_t> shape) const {
  Tensor t = get(name);
  const Tensor want(nullptr, dtype, shape);
  bool same_shape = t.ndim == want.ndim;
  for (int i = 0; same_shape && i < t.ndim; ++i) same_shape = t.shape[i] == want.shape[i];
  TRI_CHECK(t.dtype == dtype && same_shape, "{}: tensor {} is {} {}, expected {} {}",
            file_of(name).string(), name, dtype_name(t.dtype), t.shape_str(), dtype_name(dtype),
            want.shape_str());
  return t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(shard_of_.size());
  for (const auto& [n, f] : shard_of_) out.push_back(n);
  return out;
}

fs::path Checkpoint::file_of(const std::string& name) const {
  auto it = shard_of_.find(name);
  return it == shard_of_.end() ? dir_ : dir_ / it->second;
}

uint64_t Checkpoint::total_bytes() const {
  if (indexed_total_bytes_) return *indexed_total_bytes_;
  uint64_t total = 0;
  for (const auto& [file, tensors] : tensors_of_) total += shard(file).data_bytes();
  return total;
}

}  // namespace trident
