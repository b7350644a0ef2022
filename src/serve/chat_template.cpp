#include "serve/chat_template.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/error.h"

namespace trident {

namespace {

using json = nlohmann::json;

constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kToolOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kToolOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";

std::string token_content(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return "";
}

// The template text: a string, or a list of named templates of which "default" is the one.
std::string template_text(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array())
    for (const json& t : value)
      if (t.is_object() && t.value("name", "") == "default") return t.value("template", "");
  return "";
}

bool is_system(const std::string& role) { return role == "system" || role == "developer"; }

}  // namespace

ChatTemplate ChatTemplate::from_dir(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer_config.json";
  std::ifstream file(path);
  TRI_CHECK(file.good(),
            "cannot open {}: the chat format comes from the model's "
            "tokenizer_config.json",
            path.string());
  json config;
  try {
    config = json::parse(file);
  } catch (const json::exception& e) {
    fail("{} is not valid JSON ({}): replace it with the model's original file", path.string(),
         e.what());
  }
  const std::string text = template_text(config.value("chat_template", json()));
  TRI_CHECK(!text.empty(), "{} has no chat_template: chat needs the model's chat format",
            path.string());
  TRI_CHECK(text.find(kUser) != std::string::npos && text.find(kAssistant) != std::string::npos,
            "{}: the chat_template is not DeepSeek-V3's format (it never writes {} and {}), the "
            "only one supported; use plain completions for this model",
            path.string(), kUser, kAssistant);
  std::string bos = token_content(config.value("bos_token", json()));
  std::string eos = token_content(config.value("eos_token", json()));
  TRI_CHECK(!bos.empty() && !eos.empty(), "{} lacks bos_token or eos_token (bos '{}', eos '{}')",
            path.string(), bos, eos);
  return ChatTemplate(std::move(bos), std::move(eos));
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  std::string out = bos_;
  bool first_system = true;
  for (const ChatMessage& m : messages) {
    if (!is_system(m.role)) continue;
    if (!first_system) out += "\n\n";
    out += m.content;
    first_system = false;
  }
  // After tool outputs, the next assistant turn or the end closes them.
  bool in_tool_outputs = false, first_tool_output = true;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      in_tool_outputs = false;
      out += kUser;
      out += m.content;
    } else if (m.role == "assistant") {
      out += in_tool_outputs ? kToolOutputsEnd : kAssistant;
      out += m.content;
      out += eos_;
      in_tool_outputs = false;
    } else if (m.role == "tool") {
      in_tool_outputs = true;
      if (first_tool_output)
        out += kToolOutputsBegin;
      else
        out += "\n";
      first_tool_output = false;
      out += kToolOutputBegin;
      out += m.content;
      out += kToolOutputEnd;
    } else {
      TRI_CHECK(is_system(m.role),
                "chat message role '{}' is not one of system, developer, user, assistant, tool",
                m.role);
    }
  }
  if (in_tool_outputs)
    out += kToolOutputsEnd;
  else if (add_generation_prompt)
    out += kAssistant;
  return out;
}

}  // namespace trident
