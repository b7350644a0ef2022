// The safetensors reader and the checkpoint directory: values read back exactly, every malformed
// file or index is reported with the file, the tensor and the problem, and nothing reads tensor
// bytes before they are used. Files are written here, byte by byte, into a temporary directory.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

using namespace trident;
namespace fs = std::filesystem;

namespace {

struct FakeTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <class T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), values.begin(), s.size());
  return s;
}

void write_file(const fs::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), std::streamsize(contents.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file's header and data for tensors stored back to back; `edit` may change the
// header before it is serialized, to make it wrong in one way.
std::string safetensors_bytes(const std::vector<FakeTensor>& tensors,
                              const std::function<void(nlohmann::json&)>& edit = {}) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (edit) edit(header);
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');  // writers pad the header to 8 bytes
  const uint64_t n = text.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
  return out + text + data;
}

void write_shard(const fs::path& path, const std::vector<FakeTensor>& tensors,
                 const std::function<void(nlohmann::json&)>& edit = {}) {
  write_file(path, safetensors_bytes(tensors, edit));
}

void write_index(const fs::path& dir, const nlohmann::json& weight_map, uint64_t total_size) {
  write_file(
      dir / "model.safetensors.index.json",
      nlohmann::json{{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}}.dump(
          2));
}

// The message of the trident::Error that `f` throws, or "(no error)".
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_mentions(const std::string& message, std::initializer_list<std::string> parts) {
  for (const auto& p : parts)
    EXPECT_NE(message.find(p), std::string::npos) << "'" << p << "' not in: " << message;
}

size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * size_t(sysconf(_SC_PAGESIZE));
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "trident-checkpoint-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

using SafetensorsFileTest = TempDir;
using CheckpointTest = TempDir;

std::vector<FakeTensor> one_of_each_dtype() {
  return {
      {"bf16",
       "BF16",
       {2, 2},
       bytes_of<uint16_t>({0x3fc0, 0xc010, 0x0000, 0x7f80})},             // 1.5, -2.25, 0, inf
      {"f16", "F16", {3}, bytes_of<uint16_t>({0x3c00, 0xc000, 0x7bff})},  // 1, -2, 65504
      {"f32", "F32", {1, 3}, bytes_of<float>({0.1f, -3.5f, 1e-30f})},
      {"fp8", "F8_E4M3", {4}, bytes_of<uint8_t>({0x38, 0xc0, 0x7e, 0x01})},  // 1, -2, 448, 2^-9
      {"i32", "I32", {2}, bytes_of<int32_t>({-7, 2147483647})},
      {"i64", "I64", {1}, bytes_of<int64_t>({-(int64_t(1) << 40)})},
      {"u8", "U8", {2, 1, 1, 3}, bytes_of<uint8_t>({0, 1, 2, 253, 254, 255})},
  };
}

TEST_F(SafetensorsFileTest, ReadsEveryDtypeBackBitExactly) {
  const auto tensors = one_of_each_dtype();
  write_shard(dir_ / "a.safetensors", tensors);
  auto f = SafetensorsFile::open(dir_ / "a.safetensors");
  const std::map<std::string, DType> dtypes = {
      {"bf16", DType::BF16}, {"f16", DType::F16}, {"f32", DType::F32}, {"fp8", DType::F8E4M3},
      {"i32", DType::I32},   {"i64", DType::I64}, {"u8", DType::U8}};
  for (const auto& want : tensors) {
    Tensor t = f->tensor(want.name);
    EXPECT_EQ(t.dtype, dtypes.at(want.name)) << want.name;
    ASSERT_EQ(t.ndim, int(want.shape.size())) << want.name;
    for (int i = 0; i < t.ndim; ++i) EXPECT_EQ(t.shape[i], want.shape[i]) << want.name;
    EXPECT_EQ(t.device, Device::CPU);
    ASSERT_EQ(t.nbytes(), want.bytes.size()) << want.name;
    EXPECT_EQ(std::memcmp(t.data, want.bytes.data(), want.bytes.size()), 0) << want.name;
  }
  EXPECT_EQ(load_f32(f->tensor("bf16"), 1), -2.25f);
  EXPECT_EQ(load_f32(f->tensor("f16"), 2), 65504.0f);
  EXPECT_EQ(load_f32(f->tensor("fp8"), 2), 448.0f);
  EXPECT_EQ(f->tensor("i64").ptr<int64_t>()[0], -(int64_t(1) << 40));
  EXPECT_EQ(f->names(),
            (std::vector<std::string>{"bf16", "f16", "f32", "fp8", "i32", "i64", "u8"}));
  EXPECT_TRUE(f->has("u8"));
  EXPECT_FALSE(f->has("__metadata__"));
  EXPECT_EQ(f->data_bytes(), 8u + 6 + 12 + 4 + 8 + 8 + 6);
}

TEST_F(SafetensorsFileTest, ScalarComesBackAsOneElement) {
  write_shard(dir_ / "a.safetensors", {{"s", "F32", {}, bytes_of<float>({2.5f})}});
  Tensor t = SafetensorsFile::open(dir_ / "a.safetensors")->tensor("s");
  ASSERT_EQ(t.ndim, 1);
  EXPECT_EQ(t.shape[0], 1);
  EXPECT_EQ(t.ptr<float>()[0], 2.5f);
}

TEST_F(SafetensorsFileTest, ViewsKeepTheMappingAliveAfterTheFileIsDropped) {
  write_shard(dir_ / "a.safetensors", {{"x", "F32", {2}, bytes_of<float>({4.0f, 5.0f})}});
  Tensor t = SafetensorsFile::open(dir_ / "a.safetensors")->tensor("x");
  fs::remove(dir_ / "a.safetensors");
  EXPECT_EQ(t.ptr<float>()[1], 5.0f);
}

TEST_F(SafetensorsFileTest, MissingTensorIsNamedWithTheFile) {
  write_shard(dir_ / "a.safetensors", {{"x", "U8", {1}, "\x01"}});
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors")->tensor("y"); }),
                  {"a.safetensors", "has no tensor y"});
}

TEST_F(SafetensorsFileTest, MissingFileIsNamed) {
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "nope.safetensors"); }),
                  {"cannot open", "nope.safetensors", "No such file"});
}

TEST_F(SafetensorsFileTest, FileShorterThanTheHeaderLengthIsTruncated) {
  write_file(dir_ / "a.safetensors", "abc");
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors is truncated", "3 bytes"});
}

TEST_F(SafetensorsFileTest, HeaderLongerThanTheFileIsTruncated) {
  std::string bytes = safetensors_bytes({{"x", "U8", {1}, "\x01"}});
  write_file(dir_ / "a.safetensors", bytes.substr(0, 20));
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors is truncated", "its header is", "the file only 20 bytes"});
}

TEST_F(SafetensorsFileTest, ImplausibleHeaderLengthIsNotSafetensors) {
  write_file(dir_ / "a.safetensors", std::string("\xff\xff\xff\xff\x00\x00\x00\x00{}", 10));
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors is not a safetensors file", "4294967295 bytes"});
}

TEST_F(SafetensorsFileTest, GitLfsPointerIsRecognised) {
  write_file(dir_ / "a.safetensors",
             "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4000000000\n");
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors is a Git LFS pointer", "git lfs pull"});
}

TEST_F(SafetensorsFileTest, HeaderThatIsNotJsonIsCorrupt) {
  std::string bytes = safetensors_bytes({{"x", "U8", {1}, "\x01"}});
  bytes[9] = '#';
  write_file(dir_ / "a.safetensors", bytes);
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors has a corrupt header, not valid JSON", "parse error"});
}

TEST_F(SafetensorsFileTest, HeaderThatIsNotAnObjectIsCorrupt) {
  write_shard(dir_ / "a.safetensors", {}, [](nlohmann::json& h) {
    h = nlohmann::json::array({1, 2});
  });
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors has a corrupt header", "array"});
}

TEST_F(SafetensorsFileTest, EntryWithoutDataOffsetsIsNamed) {
  write_shard(dir_ / "a.safetensors", {{"w", "U8", {1}, "\x01"}},
              [](nlohmann::json& h) { h["w"].erase("data_offsets"); });
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors", "tensor w needs dtype, shape and data_offsets"});
}

TEST_F(SafetensorsFileTest, UnknownDtypeIsNamedAtOpen) {
  write_shard(dir_ / "a.safetensors", {{"w", "Q4_K", {2}, "ab"}});
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors", "tensor w has dtype Q4_K", "BF16, F16, F32, F8_E4M3"});
}

TEST_F(SafetensorsFileTest, UnreadableDtypeIsNamedWhenTheTensorIsRead) {
  write_shard(dir_ / "a.safetensors",
              {{"d", "F64", {1}, bytes_of<double>({1.0})}, {"x", "U8", {1}, "\x07"}});
  auto f = SafetensorsFile::open(dir_ / "a.safetensors");
  EXPECT_TRUE(f->has("d"));
  EXPECT_EQ(f->tensor("x").ptr<uint8_t>()[0], 7);
  expect_mentions(error_of([&] { f->tensor("d"); }),
                  {"a.safetensors", "tensor d has dtype F64, which Trident does not read"});
}

TEST_F(SafetensorsFileTest, MoreThanFourDimensionsAreNamed) {
  write_shard(dir_ / "a.safetensors", {{"w", "U8", {1, 1, 1, 1, 2}, "ab"}});
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"tensor w has shape [1,1,1,1,2]", "up to 4 dimensions"});
}

TEST_F(SafetensorsFileTest, NegativeDimensionIsCorrupt) {
  write_shard(dir_ / "a.safetensors", {{"w", "U8", {2}, "ab"}},
              [](nlohmann::json& h) { h["w"]["shape"] = {-2}; });
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"corrupt header", "tensor w has shape [-2]"});
}

TEST_F(SafetensorsFileTest, OffsetsThatDisagreeWithDtypeAndShapeAreNamed) {
  write_shard(dir_ / "a.safetensors", {{"w", "BF16", {2, 3}, std::string(12, '\0')}},
              [](nlohmann::json& h) {
                h["w"]["shape"] = {2, 5};
              });
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors", "tensor w (BF16 [2,5]) takes 20 bytes", "[0,12] span 12"});
}

TEST_F(SafetensorsFileTest, ReversedOffsetsAreCorrupt) {
  write_shard(dir_ / "a.safetensors", {{"w", "U8", {0}, ""}}, [](nlohmann::json& h) {
    h["w"]["data_offsets"] = {4, 2};
  });
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"tensor w has data_offsets [4,2]", "begin <= end"});
}

TEST_F(SafetensorsFileTest, OverlappingTensorsAreNamed) {
  write_shard(
      dir_ / "a.safetensors",
      {{"first", "F32", {2}, std::string(8, '\0')}, {"second", "F32", {2}, std::string(8, '\0')}},
      [](nlohmann::json& h) {
        h["second"]["data_offsets"] = {4, 12};
      });
  expect_mentions(error_of([&] { SafetensorsFile::open(dir_ / "a.safetensors"); }),
                  {"a.safetensors has a corrupt header", "first (bytes 0..8)",
                   "second (bytes 4..12)", "overlap"});
}

TEST_F(SafetensorsFileTest, TruncatedDataSectionSaysHowMuchIsMissing) {
  std::string bytes = safetensors_bytes({{"a", "U8", {40000}, std::string(40000, 'x')}});
  write_file(dir_ / "model-00003-of-00005.safetensors", bytes.substr(0, bytes.size() - 28000));
  expect_mentions(
      error_of([&] { SafetensorsFile::open(dir_ / "model-00003-of-00005.safetensors"); }),
      {"model-00003-of-00005.safetensors is truncated: header says 40.0 KB of data, "
       "file has 12.0 KB (28000 bytes short)"});
}

TEST(FormatBytes, PicksAReadableUnit) {
  EXPECT_EQ(format_bytes(4'200'000'000), "4.2 GB");
  EXPECT_EQ(format_bytes(1'149'999'999), "1.1 GB");
  EXPECT_EQ(format_bytes(2'500'000), "2.5 MB");
  EXPECT_EQ(format_bytes(40'000), "40.0 KB");
  EXPECT_EQ(format_bytes(9'999), "9999 bytes");
}

// A multi-gigabyte shard on a sparse file: opening it, the checkpoint and a view must not fault
// in its data, and a truncated one is caught from the sizes alone.
TEST_F(SafetensorsFileTest, OpeningDoesNotReadTensorBytes) {
  const uint64_t big = 4'200'000'000;
  std::string head = safetensors_bytes({{"small", "U8", {4}, "abcd"}}, [&](nlohmann::json& h) {
    h["big"] = {{"dtype", "U8"}, {"shape", {big}}, {"data_offsets", {4, 4 + big}}};
  });
  const fs::path full = dir_ / "model.safetensors";
  write_file(full, head);
  fs::resize_file(full, head.size() + big);

  const size_t before = resident_bytes();
  Checkpoint c = Checkpoint::open(dir_);
  Tensor t = c.get("big", DType::U8, {int64_t(big)});
  EXPECT_EQ(c.total_bytes(), 4 + big);
  EXPECT_EQ(c.get("small").ptr<char>()[3], 'd');
  EXPECT_LT(resident_bytes(), before + (64u << 20));

  fs::resize_file(full, head.size() + 1'100'000'000);
  expect_mentions(error_of([&] { SafetensorsFile::open(full); }),
                  {"model.safetensors is truncated: header says 4.2 GB of data, file has 1.1 GB"});
}

// Two shards and an index, as DeepSeek's releases are laid out.
void write_two_shard_checkpoint(const fs::path& dir) {
  write_shard(dir / "model-00001-of-00002.safetensors",
              {{"model.embed_tokens.weight",
                "BF16",
                {2, 2},
                bytes_of<uint16_t>({0x3f80, 0x4000, 0x4040, 0x4080})},
               {"model.norm.weight", "F32", {2}, bytes_of<float>({0.5f, 0.25f})}});
  write_shard(dir / "model-00002-of-00002.safetensors",
              {{"lm_head.weight", "F8_E4M3", {2, 2}, bytes_of<uint8_t>({0x38, 0x40, 0x44, 0x48})},
               {"lm_head.weight_scale_inv", "F32", {1, 1}, bytes_of<float>({0.125f})}});
  write_index(dir,
              {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
               {"model.norm.weight", "model-00001-of-00002.safetensors"},
               {"lm_head.weight", "model-00002-of-00002.safetensors"},
               {"lm_head.weight_scale_inv", "model-00002-of-00002.safetensors"}},
              8 + 8 + 4 + 4);
}

TEST_F(CheckpointTest, IndexedCheckpointReadsEachTensorFromItsShard) {
  write_two_shard_checkpoint(dir_);
  Checkpoint c = Checkpoint::open(dir_);
  EXPECT_EQ(c.names(),
            (std::vector<std::string>{"lm_head.weight", "lm_head.weight_scale_inv",
                                      "model.embed_tokens.weight", "model.norm.weight"}));
  EXPECT_TRUE(c.has("model.norm.weight"));
  EXPECT_FALSE(c.has("model.layers.0.mlp.gate.weight"));
  EXPECT_EQ(c.file_of("lm_head.weight"), dir_ / "model-00002-of-00002.safetensors");
  EXPECT_EQ(c.total_bytes(), 24u);
  EXPECT_EQ(load_f32(c.get("model.embed_tokens.weight", DType::BF16, {2, 2}), 3), 4.0f);
  EXPECT_EQ(c.get("model.norm.weight", DType::F32, {2}).ptr<float>()[1], 0.25f);
  EXPECT_EQ(load_f32(c.get("lm_head.weight", DType::F8E4M3, {2, 2}), 1), 2.0f);
  EXPECT_EQ(c.get("lm_head.weight_scale_inv").ptr<float>()[0], 0.125f);
}

TEST_F(CheckpointTest, ShardsAreCheckedWhenFirstUsed) {
  write_two_shard_checkpoint(dir_);
  fs::resize_file(dir_ / "model-00002-of-00002.safetensors",
                  fs::file_size(dir_ / "model-00002-of-00002.safetensors") - 2);
  Checkpoint c = Checkpoint::open(dir_);
  EXPECT_EQ(c.get("model.norm.weight").ptr<float>()[0], 0.5f);
  expect_mentions(error_of([&] { c.get("lm_head.weight"); }),
                  {"model-00002-of-00002.safetensors is truncated", "(2 bytes short)"});
}

TEST_F(CheckpointTest, MissingShardIsNamed) {
  write_two_shard_checkpoint(dir_);
  fs::remove(dir_ / "model-00002-of-00002.safetensors");
  expect_mentions(error_of([&] { Checkpoint::open(dir_); }),
                  {"checkpoint shard", "model-00002-of-00002.safetensors listed in",
                   "model.safetensors.index.json is missing"});
}

TEST_F(CheckpointTest, TensorTheIndexPutsInTheWrongShardIsNamed) {
  write_two_shard_checkpoint(dir_);
  write_index(dir_,
              {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
               {"model.norm.weight", "model-00002-of-00002.safetensors"},
               {"lm_head.weight", "model-00002-of-00002.safetensors"}},
              0);
  Checkpoint c = Checkpoint::open(dir_);
  EXPECT_EQ(load_f32(c.get("model.embed_tokens.weight"), 0), 1.0f);
  expect_mentions(error_of([&] { c.get("lm_head.weight"); }),
                  {"model.safetensors.index.json maps tensor model.norm.weight to",
                   "model-00002-of-00002.safetensors, which does not contain it"});
}

TEST_F(CheckpointTest, IndexThatIsNotJsonIsNamed) {
  write_two_shard_checkpoint(dir_);
  write_file(dir_ / "model.safetensors.index.json", "{\"weight_map\": {");
  expect_mentions(error_of([&] { Checkpoint::open(dir_); }),
                  {"model.safetensors.index.json is not valid JSON"});
}

TEST_F(CheckpointTest, IndexWithoutWeightMapIsNamed) {
  write_file(dir_ / "model.safetensors.index.json", "{\"metadata\": {}}");
  expect_mentions(error_of([&] { Checkpoint::open(dir_); }),
                  {"model.safetensors.index.json has no weight_map"});
}

TEST_F(CheckpointTest, IndexPointingOutsideTheDirectoryIsRefused) {
  write_index(dir_, {{"w", "../elsewhere.safetensors"}}, 0);
  expect_mentions(error_of([&] { Checkpoint::open(dir_); }),
                  {"maps tensor w to \"../elsewhere.safetensors\", which is not a file name"});
}

TEST_F(CheckpointTest, SingleFileCheckpointNeedsNoIndex) {
  write_shard(dir_ / "model.safetensors", one_of_each_dtype());
  Checkpoint c = Checkpoint::open(dir_);
  EXPECT_EQ(c.names().size(), 7u);
  EXPECT_EQ(c.file_of("i32"), dir_ / "model.safetensors");
  EXPECT_EQ(c.total_bytes(), 52u);
  EXPECT_EQ(c.get("i32", DType::I32, {2}).ptr<int32_t>()[0], -7);
}

TEST_F(CheckpointTest, DirectoryWithoutSafetensorsSaysWhatItHolds) {
  write_file(dir_ / "config.json", "{}");
  write_file(dir_ / "pytorch_model.bin", "x");
  expect_mentions(error_of([&] { Checkpoint::open(dir_); }),
                  {"holds no safetensors checkpoint", "config.json, pytorch_model.bin",
                   "convert the PyTorch weights"});
  expect_mentions(error_of([&] { Checkpoint::open(dir_ / "absent"); }), {"absent does not exist"});
}

TEST_F(CheckpointTest, MissingTensorNamesTheDirectoryAndTheTensor) {
  write_two_shard_checkpoint(dir_);
  Checkpoint c = Checkpoint::open(dir_);
  expect_mentions(error_of([&] { c.get("model.layers.0.self_attn.o_proj.weight"); }),
                  {dir_.string(), "has no tensor model.layers.0.self_attn.o_proj.weight"});
}

TEST_F(CheckpointTest, CheckedGetNamesFileTensorExpectedAndFound) {
  write_two_shard_checkpoint(dir_);
  Checkpoint c = Checkpoint::open(dir_);
  expect_mentions(error_of([&] {
                    c.get("lm_head.weight", DType::BF16, {2, 2});
                  }),
                  {"model-00002-of-00002.safetensors: tensor lm_head.weight is F8_E4M3 [2, 2], "
                   "expected BF16 [2, 2]"});
  expect_mentions(error_of([&] {
                    c.get("model.norm.weight", DType::F32, {2, 1});
                  }),
                  {"model-00001-of-00002.safetensors: tensor model.norm.weight is F32 [2], "
                   "expected F32 [2, 1]"});
}

TEST_F(CheckpointTest, ConcurrentFirstUseMapsEachShardOnce) {
  write_two_shard_checkpoint(dir_);
  Checkpoint c = Checkpoint::open(dir_);
  std::vector<const void*> seen(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back(
        [&, i] { seen[i] = c.get(i % 2 ? "lm_head.weight" : "model.norm.weight").data; });
  for (auto& t : threads) t.join();
  for (int i = 2; i < 8; ++i) EXPECT_EQ(seen[i], seen[i % 2]) << i;
}

// The golden fixtures (tools/make_golden.py) in the layout of DeepSeek's releases: experts stored
// one by one, every FP8 weight with f32 block scales of shape [ceil(out/128), ceil(in/128)] whose
// product with the FP8 values gives the BF16 twin's weight, the router and norms unquantized.
TEST(GoldenFixtures, Fp8WeightsDequantizeToTheirBf16Twins) {
  int compared = 0;
  for (const auto& e : fs::directory_iterator(fs::path(TRIDENT_TEST_DATA) / "golden")) {
    const std::string name = e.path().filename().string();
    if (!name.ends_with("-fp8")) continue;
    const fs::path twin = e.path().parent_path() / (name.substr(0, name.size() - 3) + "bf16");
    ASSERT_TRUE(fs::exists(twin)) << twin;
    Checkpoint fp8 = Checkpoint::open(e.path()), bf16 = Checkpoint::open(twin);
    uint64_t bytes = 0;
    for (const std::string& n : fp8.names()) {
      Tensor t = fp8.get(n);
      bytes += t.nbytes();
      EXPECT_EQ(n.find("gate_up_proj"), std::string::npos) << n;
      if (n.ends_with("e_score_correction_bias")) {
        EXPECT_EQ(dtype_name(t.dtype), "F32") << n;
      } else if (n.ends_with("norm.weight") || n.ends_with("mlp.gate.weight") ||
                 n.find("embed") != n.npos || n.find("head") != n.npos ||
                 n.ends_with("eh_proj.weight")) {
        EXPECT_EQ(dtype_name(t.dtype), "BF16") << n;
      }
      if (t.dtype != DType::F8E4M3) continue;
      const int64_t out = t.dim(0), in = t.dim(1);
      Tensor scale = fp8.get(n + "_scale_inv", DType::F32, {(out + 127) / 128, (in + 127) / 128});
      Tensor ref = bf16.get(n, DType::BF16, {out, in});
      for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; ++c) {
          const float s = scale.ptr<float>()[(r / 128) * scale.dim(1) + c / 128];
          const float got = load_f32(t, r * in + c) * s, want = load_f32(ref, r * in + c);
          // e4m3 keeps 3 mantissa bits (2^-4 relative), subnormals step 2^-9 of the scale.
          ASSERT_LE(std::fabs(got - want), 0.07f * std::fabs(want) + s / 256)
              << n << " [" << r << ", " << c << "]";
        }
      ++compared;
    }
    EXPECT_EQ(fp8.total_bytes(), bytes) << name;
  }
  EXPECT_GT(compared, 0);
}

}  // namespace
