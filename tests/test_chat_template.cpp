// The native DeepSeek-V3 chat format against the Jinja chat_template it replaces:
// tools/make_tokenizer_fixture.py rendered each tokenizer directory's template with jinja2 (as
// transformers does) for a set of conversations and wrote expected_chat.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "serve/chat_template.h"
#include "serve/tokenizer.h"

using namespace trident;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kTokenizerData = fs::path(TRIDENT_TEST_DATA) / "tokenizer";

json read_json(const fs::path& path) {
  std::ifstream f(path);
  return json::parse(f);
}

std::vector<ChatMessage> messages_of(const json& messages) {
  std::vector<ChatMessage> out;
  for (const json& m : messages) out.push_back({m["role"], m["content"]});
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "trident-chat-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

TEST(ChatTemplate, RendersWhatTheJinjaTemplateRenders) {
  const json cases = read_json(kTokenizerData / "expected_chat.json")["cases"];
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    for (const auto& [dir, want] : c["rendered"].items()) {
      const ChatTemplate chat = ChatTemplate::from_dir(kTokenizerData / dir);
      EXPECT_EQ(chat.render(messages_of(c["messages"]), c["add_generation_prompt"]),
                want.get<std::string>())
          << dir << ": " << c["messages"].dump() << " add_generation_prompt "
          << c["add_generation_prompt"];
    }
  }
}

TEST(ChatTemplate, DeveloperRoleCountsAsSystem) {
  const ChatTemplate chat("<B>", "<E>");
  EXPECT_EQ(chat.render({{"developer", "rules"}, {"user", "hi"}}, true),
            chat.render({{"system", "rules"}, {"user", "hi"}}, true));
}

TEST(ChatTemplate, UnknownRoleIsNamed) {
  const ChatTemplate chat("<B>", "<E>");
  const std::string message = error_of([&] { chat.render({{"narrator", "x"}}, true); });
  EXPECT_NE(message.find("role 'narrator'"), std::string::npos) << message;
}

TEST(ChatTemplate, RenderedPromptTokenizesToTheChatTokens) {
  const fs::path dir = kTokenizerData / "tiny";
  const Tokenizer tokenizer = Tokenizer::from_dir(dir);
  const std::string prompt =
      ChatTemplate::from_dir(dir).render({{"system", "Be brief."}, {"user", "Hi"}}, true);
  const std::vector<int32_t> ids = tokenizer.encode(prompt);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), tokenizer.bos_id());
  EXPECT_EQ(ids.back(), tokenizer.token_id("<｜Assistant｜>"));
  EXPECT_NE(std::find(ids.begin(), ids.end(), *tokenizer.token_id("<｜User｜>")), ids.end());
}

TEST(ChatTemplate, MissingConfigNamesThePath) {
  TempDir dir;
  const std::string message = error_of([&] { ChatTemplate::from_dir(dir.path()); });
  EXPECT_NE(message.find((dir.path() / "tokenizer_config.json").string()), std::string::npos)
      << message;
}

TEST(ChatTemplate, OtherModelsTemplatesAreRefused) {
  TempDir dir;
  json config = read_json(kTokenizerData / "tiny" / "tokenizer_config.json");
  config["chat_template"] =
      "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
      "{{ m['content'] }}<|eot_id|>{% endfor %}";
  std::ofstream(dir.path() / "tokenizer_config.json") << config.dump();
  const std::string message = error_of([&] { ChatTemplate::from_dir(dir.path()); });
  EXPECT_NE(message.find("not DeepSeek-V3's format"), std::string::npos) << message;
}

TEST(ChatTemplate, ConfigWithoutTemplateIsRefused) {
  TempDir dir;
  json config = read_json(kTokenizerData / "tiny" / "tokenizer_config.json");
  config.erase("chat_template");
  std::ofstream(dir.path() / "tokenizer_config.json") << config.dump();
  const std::string message = error_of([&] { ChatTemplate::from_dir(dir.path()); });
  EXPECT_NE(message.find("has no chat_template"), std::string::npos) << message;
}

}  // namespace
