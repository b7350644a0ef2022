#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/error.h"

namespace trident {

namespace {

// The safetensors format caps its header at 100 MB; a larger length means this is not one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::optional<DType> readable_dtype(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "F8_E4M3") return DType::F8E4M3;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  if (s == "U8") return DType::U8;
  return std::nullopt;
}

// Element sizes of the safetensors dtypes Trident does not read, so that files holding them
// still validate; 0 for names the format does not define (or sub-byte ones).
size_t other_dtype_size(const std::string& s) {
  static const std::map<std::string, size_t, std::less<>> sizes = {
      {"BOOL", 1}, {"I8", 1},  {"F8_E5M2", 1}, {"F8_E8M0", 1}, {"I16", 2},
      {"U16", 2},  {"U32", 4}, {"F64", 8},     {"U64", 8},     {"C64", 8}};
  auto it = sizes.find(s);
  return it == sizes.end() ? 0 : it->second;
}

constexpr const char* kReadableDtypes = "BF16, F16, F32, F8_E4M3, I32, I64, U8";

// Closes a file descriptor on every path out of open().
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string format_bytes(uint64_t b) {
  if (b >= 1'000'000'000) return fmt::format("{:.1f} GB", double(b) / 1e9);
  if (b >= 1'000'000) return fmt::format("{:.1f} MB", double(b) / 1e6);
  if (b >= 10'000) return fmt::format("{:.1f} KB", double(b) / 1e3);
  return fmt::format("{} bytes", b);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string name = path.string();
  Fd file{::open(name.c_str(), O_RDONLY | O_CLOEXEC)};
  TRI_CHECK(file.fd >= 0, "cannot open checkpoint shard {}: {}", name, std::strerror(errno));
  struct stat st;
  TRI_CHECK(fstat(file.fd, &st) == 0, "cannot stat checkpoint shard {}: {}", name,
            std::strerror(errno));
  TRI_CHECK(S_ISREG(st.st_mode), "checkpoint shard {} is not a regular file", name);
  const uint64_t size = uint64_t(st.st_size);
  TRI_CHECK(size >= 8,
            "checkpoint shard {} is truncated: {} bytes, too short for the 8-byte header length "
            "of a safetensors file; download or copy it again",
            name, size);

  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (f->map_ == MAP_FAILED) {
    f->map_ = nullptr;
    fail("cannot map checkpoint shard {} ({}): {}", name, format_bytes(size), std::strerror(errno));
  }
  f->map_bytes_ = size;
  const char* bytes = static_cast<const char*>(f->map_);

  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | uint8_t(bytes[i]);
  if (std::string_view(bytes, std::min<uint64_t>(size, 24)).starts_with("version https://git-lfs"))
    fail(
        "checkpoint shard {} is a Git LFS pointer, not the weights: fetch them with `git lfs pull`",
        name);
  TRI_CHECK(header_bytes <= kMaxHeaderBytes,
            "checkpoint shard {} is not a safetensors file: its first 8 bytes give a header length "
            "of {} bytes, above the format's limit of 100 MB",
            name, header_bytes);
  TRI_CHECK(header_bytes <= size - 8,
            "checkpoint shard {} is truncated: its header is {} long, the file only {}; download "
            "or copy it again",
            name, format_bytes(header_bytes), format_bytes(size));
  f->data_ = bytes + 8 + header_bytes;
  f->parse_header(bytes + 8, header_bytes, size - 8 - header_bytes);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_bytes_);
}

SafetensorsFile::Entry SafetensorsFile::parse_entry(const std::string& tname,
                                                    const nlohmann::json& v) const {
  const std::string file = path_.string();
  TRI_CHECK(
      v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
      "checkpoint shard {} has a corrupt header: tensor {} needs dtype, shape and "
      "data_offsets, has {}",
      file, tname, v.dump());
  const nlohmann::json &jdtype = v["dtype"], &jshape = v["shape"], &joff = v["data_offsets"];
  Entry e;
  TRI_CHECK(jdtype.is_string(), "checkpoint shard {} has a corrupt header: tensor {} has dtype {}",
            file, tname, jdtype.dump());
  e.dtype_name = jdtype.get<std::string>();
  e.dtype = readable_dtype(e.dtype_name);
  const size_t elem_bytes = e.dtype ? dtype_size(*e.dtype) : other_dtype_size(e.dtype_name);
  TRI_CHECK(elem_bytes != 0,
            "checkpoint shard {}: tensor {} has dtype {}, which is not a safetensors dtype that "
            "Trident knows (it reads {})",
            file, tname, e.dtype_name, kReadableDtypes);

  TRI_CHECK(jshape.is_array() && jshape.size() <= size_t(Tensor::kMaxDims),
            "checkpoint shard {}: tensor {} has shape {}; Trident reads up to {} dimensions", file,
            tname, jshape.dump(), Tensor::kMaxDims);
  uint64_t bytes = elem_bytes;
  for (const auto& d : jshape) {
    TRI_CHECK(d.is_number_unsigned(),
              "checkpoint shard {} has a corrupt header: tensor {} has shape {}", file, tname,
              jshape.dump());
    const uint64_t extent = d.get<uint64_t>();
    TRI_CHECK(extent <= uint64_t(INT64_MAX) && !__builtin_mul_overflow(bytes, extent, &bytes),
              "checkpoint shard {} has a corrupt header: tensor {} has shape {}, too large", file,
              tname, jshape.dump());
    e.shape.push_back(int64_t(extent));
  }

  TRI_CHECK(joff.is_array() && joff.size() == 2 && joff[0].is_number_unsigned() &&
                joff[1].is_number_unsigned() && joff[0].get<uint64_t>() <= joff[1].get<uint64_t>(),
            "checkpoint shard {} has a corrupt header: tensor {} has data_offsets {}, expected "
            "[begin, end] with begin <= end",
            file, tname, joff.dump());
  e.begin = joff[0].get<uint64_t>();
  e.end = joff[1].get<uint64_t>();
  TRI_CHECK(e.end - e.begin == bytes,
            "checkpoint shard {} has a corrupt header: tensor {} ({} {}) takes {} bytes but its "
            "data_offsets {} span {}",
            file, tname, e.dtype_name, jshape.dump(), bytes, joff.dump(), e.end - e.begin);
  return e;
}

void SafetensorsFile::parse_header(const char* header, uint64_t header_bytes,
                                   uint64_t data_section_bytes) {
  const std::string file = path_.string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header, header + header_bytes);
  } catch (const nlohmann::json::parse_error& e) {
    fail("checkpoint shard {} has a corrupt header, not valid JSON ({}); download or copy it again",
         file, e.what());
  }
  TRI_CHECK(j.is_object(),
            "checkpoint shard {} has a corrupt header: a JSON {} where an object "
            "was expected",
            file, j.type_name());

  for (auto& [tname, v] : j.items()) {
    if (tname == "__metadata__") continue;
    entries_.emplace(tname, parse_entry(tname, v));
  }

  // Byte ranges in order: neighbours must not overlap, and the last must end inside the file.
  std::vector<std::pair<const std::string*, const Entry*>> by_offset;
  for (const auto& [n, e] : entries_) by_offset.push_back({&n, &e});
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  uint64_t end = 0;
  const std::pair<const std::string*, const Entry*>* prev = nullptr;
  for (const auto& cur : by_offset) {
    const Entry& e = *cur.second;
    if (e.begin == e.end) continue;  // an empty tensor occupies no bytes
    TRI_CHECK(!prev || e.begin >= prev->second->end,
              "checkpoint shard {} has a corrupt header: tensors {} (bytes {}..{}) and {} (bytes "
              "{}..{}) overlap",
              file, *prev->first, prev->second->begin, prev->second->end, *cur.first, e.begin,
              e.end);
    prev = &cur;
    end = std::max(end, e.end);
    data_bytes_ += e.end - e.begin;
  }
  TRI_CHECK(end <= data_section_bytes,
            "checkpoint shard {} is truncated: header says {} of data, file has {} ({} bytes "
            "short); download or copy it again",
            file, format_bytes(end), format_bytes(data_section_bytes), end - data_section_bytes);
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  auto it = entries_.find(name);
  TRI_CHECK(it != entries_.end(), "checkpoint shard {} has no tensor {}", path_.string(), name);
  const Entry& e = it->second;
  TRI_CHECK(e.dtype.has_value(),
            "checkpoint shard {}: tensor {} has dtype {}, which Trident does "
            "not read (it reads {})",
            path_.string(), name, e.dtype_name, kReadableDtypes);
  Tensor t;
  t.data = const_cast<char*>(data_ + e.begin);
  t.dtype = *e.dtype;
  t.ndim = e.shape.empty() ? 1 : int(e.shape.size());
  t.shape[0] = 1;
  for (size_t i = 0; i < e.shape.size(); ++i) t.shape[i] = e.shape[i];
  t.owner = std::const_pointer_cast<SafetensorsFile>(shared_from_this());
  return t;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [n, e] : entries_) out.push_back(n);
  return out;
}

}  // namespace trident
