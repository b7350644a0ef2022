// The tokenizer against HuggingFace `tokenizers`: tools/make_tokenizer_fixture.py encoded a
// varied set of texts with each tokenizer under tests/data/tokenizer and wrote the ids and
// decodes to expected_<name>.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "serve/tokenizer.h"

using namespace trident;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kTokenizerData = fs::path(TRIDENT_TEST_DATA) / "tokenizer";

std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "trident-tokenizer-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The directory holding a fixture tokenizer. deepseek-v3 keeps tokenizer.json xz-compressed; it
// is unpacked once into the temp dir (under a name that changes with the archive, written to the
// side and renamed, so tests running side by side can share it).
fs::path tokenizer_dir(const std::string& name) {
  const fs::path dir = kTokenizerData / name;
  const fs::path packed = dir / "tokenizer.json.xz";
  if (!fs::exists(packed)) return dir;
  const std::string archive = read_file(packed);
  const fs::path unpacked = fs::temp_directory_path() /
                            fmt::format("trident-{}-{:x}", name, std::hash<std::string>{}(archive));
  if (fs::exists(unpacked / "tokenizer.json")) return unpacked;
  TempDir staging;
  const fs::path json_path = staging.path() / "tokenizer.json";
  const std::string command =
      fmt::format("xz -dc '{}' > '{}'", packed.string(), json_path.string());
  if (std::system(command.c_str()) != 0)
    throw Error(fmt::format("'{}' failed: the xz tool (Debian package xz-utils) unpacks {}",
                            command, packed.string()));
  fs::copy_file(dir / "tokenizer_config.json", staging.path() / "tokenizer_config.json");
  fs::create_directories(unpacked.parent_path());
  std::error_code ignored;  // another test process may have renamed its copy in first
  fs::rename(staging.path(), unpacked, ignored);
  fs::create_directories(staging.path());  // for TempDir's clean-up
  return unpacked;
}

const Tokenizer& load_tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) it = loaded.emplace(name, Tokenizer::from_dir(tokenizer_dir(name))).first;
  return it->second;
}

const json& expected(const std::string& name) {
  static std::map<std::string, json> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end())
    it = loaded
             .emplace(name, json::parse(read_file(kTokenizerData / ("expected_" + name + ".json"))))
             .first;
  return it->second;
}

// A text as a JSON string, so whitespace and control characters show in failure messages.
std::string shown(const std::string& text) {
  const std::string quoted = json(text).dump();
  return quoted.size() > 300 ? quoted.substr(0, 300) + "...\"" : quoted;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class TokenizerFixture : public testing::TestWithParam<std::string> {
 protected:
  const Tokenizer& tokenizer() { return load_tokenizer(GetParam()); }
  const json& cases() { return expected(GetParam())["cases"]; }
};

TEST_P(TokenizerFixture, EncodesEveryTextToHuggingFaceIds) {
  int mismatches = 0;
  for (const json& c : cases()) {
    const std::string text = c["text"];
    const auto ids = tokenizer().encode(text);
    const auto want = c["ids"].get<std::vector<int32_t>>();
    if (ids != want && ++mismatches <= 10)
      ADD_FAILURE() << "text " << shown(text) << "\n  got  " << json(ids).dump() << "\n  want "
                    << json(want).dump();
  }
  EXPECT_EQ(mismatches, 0) << "of " << cases().size() << " texts";
}

TEST_P(TokenizerFixture, DecodeOfEncodeGivesBackTheText) {
  if (!expected(GetParam())["round_trips"])
    GTEST_SKIP() << "added tokens that strip whitespace drop it, in `tokenizers` too";
  for (const json& c : cases()) {
    const std::string text = c["text"];
    EXPECT_EQ(tokenizer().decode(tokenizer().encode(text)), text) << shown(text);
  }
}

TEST_P(TokenizerFixture, DecodeMatchesHuggingFaceWithAndWithoutSpecialTokens) {
  for (const json& c : cases()) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer().decode(ids), c["decoded"].get<std::string>()) << shown(c["text"]);
    EXPECT_EQ(tokenizer().decode(ids, true), c["decoded_skip_special"].get<std::string>())
        << shown(c["text"]);
  }
}

TEST_P(TokenizerFixture, SingleTokenDecodesMatchHuggingFaceIncludingPartialCharacters) {
  for (const json& d : expected(GetParam())["single_token_decodes"]) {
    const int32_t id = d["id"];
    EXPECT_EQ(tokenizer().decode({id}), d["text"].get<std::string>()) << "token " << id;
  }
}

TEST_P(TokenizerFixture, StreamDecoderOutputConcatenatedEqualsDecode) {
  for (const json& c : cases()) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    StreamDecoder stream(tokenizer());
    std::string text;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_EQ(find_invalid_utf8(piece), std::string::npos) << shown(c["text"]);
      text += piece;
    }
    text += stream.finish();
    EXPECT_EQ(text, tokenizer().decode(ids)) << shown(c["text"]);
  }
}

TEST_P(TokenizerFixture, ReportsVocabSizeBosEosAndSpecialTokensLikeHuggingFace) {
  const json& e = expected(GetParam());
  EXPECT_EQ(tokenizer().vocab_size(), e["vocab_size"].get<int32_t>());
  EXPECT_EQ(tokenizer().bos_id(), e["bos_id"].get<int32_t>());
  EXPECT_EQ(tokenizer().eos_id(), e["eos_id"].get<int32_t>());
  const auto special = e["special_ids"].get<std::set<int32_t>>();
  for (int32_t id = -1; id <= tokenizer().vocab_size(); ++id)
    EXPECT_EQ(tokenizer().is_special(id), special.count(id) > 0) << "token " << id;
}

TEST_P(TokenizerFixture, TokenIdFindsAddedTokensAndVocabularyStrings) {
  EXPECT_EQ(tokenizer().token_id("<｜begin▁of▁sentence｜>"), tokenizer().bos_id());
  EXPECT_EQ(tokenizer().token_id("<｜User｜>"), tokenizer().encode("<｜User｜>").at(0));
  // Vocabulary strings are in byte-level form: "Ġ" stands for a space.
  EXPECT_EQ(tokenizer().token_id("Ġ"), tokenizer().encode(" ").at(0));
  EXPECT_EQ(tokenizer().token_id("no such token anywhere"), std::nullopt);
}

TEST_P(TokenizerFixture, EncodesFromManyThreadsAtOnce) {
  std::vector<std::thread> threads;
  std::atomic<int> mismatches = 0;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < cases().size(); i += 2)
        if (tokenizer().encode(cases()[i]["text"].get<std::string>()) !=
            cases()[i]["ids"].get<std::vector<int32_t>>())
          ++mismatches;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(HuggingFace, TokenizerFixture,
                         testing::Values("deepseek-v3", "tiny", "tiny-gpt2", "tiny-ignore-merges",
                                         "tiny-strip"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(Tokenizer, RoundTripsRandomUnicodeText) {
  std::mt19937 rng(7);
  // Code point ranges from ASCII to supplementary planes, surrogates excluded.
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x00, 0x7F},     {0x80, 0x7FF},    {0x800, 0xD7FF},    {0xE000, 0xFFFF}, {0x10000, 0x10FFFF},
      {0x3000, 0x30FF}, {0x4E00, 0x9FFF}, {0x1F300, 0x1FAFF}, {0x0300, 0x036F}};
  for (const char* name : {"deepseek-v3", "tiny"}) {
    const Tokenizer& t = load_tokenizer(name);
    for (int n = 0; n < 200; ++n) {
      std::string text;
      const int length = std::uniform_int_distribution<int>(1, 60)(rng);
      for (int i = 0; i < length; ++i) {
        const auto& [lo, hi] = ranges[rng() % ranges.size()];
        const uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
        if (cp < 0x80) {
          text += char(cp);
        } else if (cp < 0x800) {
          text += char(0xC0 | (cp >> 6));
          text += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
          text += char(0xE0 | (cp >> 12));
          text += char(0x80 | ((cp >> 6) & 0x3F));
          text += char(0x80 | (cp & 0x3F));
        } else {
          text += char(0xF0 | (cp >> 18));
          text += char(0x80 | ((cp >> 12) & 0x3F));
          text += char(0x80 | ((cp >> 6) & 0x3F));
          text += char(0x80 | (cp & 0x3F));
        }
      }
      EXPECT_EQ(t.decode(t.encode(text)), text) << name << ": " << shown(text);
    }
  }
}

TEST(Tokenizer, EncodesLongRunsOfOneCharacterQuickly) {
  const Tokenizer& t = load_tokenizer("deepseek-v3");
  const auto start = std::chrono::steady_clock::now();
  size_t tokens = 0;
  for (const std::string& run :
       {std::string(200000, ' '), std::string(200000, 'a'), std::string(200000, '7'),
        std::string(100000, '\n'), std::string(50000, '!')})
    tokens += t.encode(run).size();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GT(tokens, 0u);
  // A quadratic step would take minutes here; linear work takes well under a second.
  EXPECT_LT(seconds, 20.0);
}

TEST(Tokenizer, StreamDecoderHoldsBackAnIncompleteCharacter) {
  const Tokenizer& t = load_tokenizer("tiny");
  // "é" is bytes C3 A9; in byte-level form, the characters "Ã" and "©", each a token.
  const auto first = t.token_id("Ã"), second = t.token_id("©");
  ASSERT_TRUE(first && second);
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(*first), "");
  EXPECT_EQ(stream.push(*second), "é");
  EXPECT_EQ(stream.finish(), "");
}

TEST(Tokenizer, StreamDecoderEndsAnUnfinishedCharacterWithAReplacement) {
  const Tokenizer& t = load_tokenizer("tiny");
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(*t.token_id("a")), "a");
  EXPECT_EQ(stream.push(*t.token_id("Ã")), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, StreamDecoderReplacesABareContinuationByteAtOnce) {
  const Tokenizer& t = load_tokenizer("tiny");
  int32_t continuation = -1;
  for (int32_t id = 0; id < t.vocab_size(); ++id)
    if (t.token_bytes(id) == "\x80") continuation = id;
  ASSERT_GE(continuation, 0);
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(continuation), "\xEF\xBF\xBD");
  EXPECT_EQ(stream.push(*t.token_id("a")), "a");
}

TEST(Tokenizer, DecodeIgnoresIdsThatNameNoToken) {
  const Tokenizer& t = load_tokenizer("tiny");
  EXPECT_EQ(t.decode({*t.token_id("a"), -5, t.vocab_size(), 1 << 30, *t.token_id("b")}), "ab");
}

TEST(Tokenizer, EncodeRejectsInvalidUtf8) {
  const Tokenizer& t = load_tokenizer("tiny");
  const std::string message = error_of([&] { t.encode("ok \xC3\x28 bad"); });
  EXPECT_NE(message.find("not valid UTF-8"), std::string::npos) << message;
  EXPECT_NE(message.find("offset 3"), std::string::npos) << message;
}

TEST(Utf8Lossy, ReplacesEachMaximalInvalidSubpart) {
  // The examples of Unicode's "U+FFFD substitution of maximal subparts".
  std::string out;
  append_utf8_lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", true, out);
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(out, "a" + r + r + r + "b" + r + "c" + r + r + "d");
  out.clear();
  append_utf8_lossy("\xED\xA0\x80 \xF4\x90\x80\x80 \xE0\x80", true, out);  // surrogate, > U+10FFFF
  EXPECT_EQ(out, r + r + r + " " + r + r + r + r + " " + r + r);
}

TEST(Utf8Lossy, StopsBeforeAnIncompleteTailUnlessAtTheEnd) {
  std::string out;
  EXPECT_EQ(append_utf8_lossy("ab\xE4\xB8", false, out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(append_utf8_lossy("ab\xE4\xB8", true, out), 4u);
  EXPECT_EQ(out, "ab\xEF\xBF\xBD");
}

// Error cases: a copy of the tiny tokenizer with one thing changed.
class BrokenTokenizer : public testing::Test {
 protected:
  json tiny() { return json::parse(read_file(kTokenizerData / "tiny" / "tokenizer.json")); }
  std::string load_error(const json& tokenizer_json) {
    write_file(dir_.path() / "tokenizer.json", tokenizer_json.dump());
    return error_of([&] { Tokenizer::from_dir(dir_.path()); });
  }
  TempDir dir_;
};

TEST_F(BrokenTokenizer, MissingTokenizerJsonNamesThePath) {
  const std::string message = error_of([&] { Tokenizer::from_dir(dir_.path() / "nowhere"); });
  EXPECT_NE(message.find((dir_.path() / "nowhere" / "tokenizer.json").string()), std::string::npos)
      << message;
}

TEST_F(BrokenTokenizer, InvalidJsonNamesTheFile) {
  write_file(dir_.path() / "tokenizer.json", "{\"model\": ");
  const std::string message = error_of([&] { Tokenizer::from_dir(dir_.path()); });
  EXPECT_NE(message.find("is not valid JSON"), std::string::npos) << message;
}

TEST_F(BrokenTokenizer, UnsupportedModelTypeIsNamed) {
  json j = tiny();
  j["model"]["type"] = "WordPiece";
  const std::string message = load_error(j);
  EXPECT_NE(message.find("model type 'WordPiece' is not supported"), std::string::npos) << message;
}

TEST_F(BrokenTokenizer, UnsupportedNormalizerIsNamed) {
  json j = tiny();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}}}};
  const std::string message = load_error(j);
  EXPECT_NE(message.find("normalizer 'NFKC' is not supported"), std::string::npos) << message;
}

TEST_F(BrokenTokenizer, UnsupportedPreTokenizerIsNamed) {
  json j = tiny();
  j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  const std::string message = load_error(j);
  EXPECT_NE(message.find("pre-tokenizer 'Metaspace' is not supported"), std::string::npos)
      << message;
}

TEST_F(BrokenTokenizer, SplitBehaviourOtherThanIsolatedIsNamed) {
  json j = tiny();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithPrevious";
  const std::string message = load_error(j);
  EXPECT_NE(message.find("behavior 'MergedWithPrevious' is not supported"), std::string::npos)
      << message;
}

TEST_F(BrokenTokenizer, TokenizerWithoutByteLevelIsRefused) {
  json j = tiny();
  j["pre_tokenizer"]["pretokenizers"].erase(3);
  const std::string message = load_error(j);
  EXPECT_NE(message.find("no ByteLevel step"), std::string::npos) << message;
}

TEST_F(BrokenTokenizer, RegexThatPcre2CannotCompileIsShown) {
  json j = tiny();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "[unclosed";
  const std::string message = load_error(j);
  EXPECT_NE(message.find("'[unclosed' does not compile"), std::string::npos) << message;
}

TEST_F(BrokenTokenizer, MergeOfUnknownTokenIsNamed) {
  json j = tiny();
  j["model"]["merges"].push_back({"Ġ", "notatoken"});
  const std::string message = load_error(j);
  EXPECT_NE(message.find("uses 'notatoken', which is not in the vocabulary"), std::string::npos)
      << message;
}

TEST_F(BrokenTokenizer, AddedTokenIdsThatHuggingFaceWouldRenumberAreRefused) {
  json j = tiny();
  j["added_tokens"].back()["id"] = 600;
  const std::string message = load_error(j);
  EXPECT_NE(message.find("has id 600, but HuggingFace tokenizers gives it id 511"),
            std::string::npos)
      << message;
}

TEST_F(BrokenTokenizer, ConfigNamingAMissingBosTokenIsNamed) {
  json config = json::parse(read_file(kTokenizerData / "tiny" / "tokenizer_config.json"));
  config["bos_token"] = "<s>";
  write_file(dir_.path() / "tokenizer_config.json", config.dump());
  const std::string message = load_error(tiny());
  EXPECT_NE(message.find("bos_token '<s>'"), std::string::npos) << message;
}

TEST_F(BrokenTokenizer, WithoutConfigThereIsNoBosOrEos) {
  write_file(dir_.path() / "tokenizer.json", tiny().dump());
  const Tokenizer t = Tokenizer::from_dir(dir_.path());
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.eos_id(), -1);
}

TEST_F(BrokenTokenizer, MergesAsStringsGiveTheSameIdsAsMergesAsPairs) {
  json j = tiny();
  for (json& merge : j["model"]["merges"])
    merge = merge[0].get<std::string>() + " " + merge[1].get<std::string>();
  write_file(dir_.path() / "tokenizer.json", j.dump());
  const Tokenizer strings = Tokenizer::from_dir(dir_.path());
  for (const json& c : expected("tiny")["cases"])
    EXPECT_EQ(strings.encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int32_t>>());
}

}  // namespace
