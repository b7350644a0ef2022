// DeepSeek-V3's chat format, rendered natively (the Jinja chat_template of the checkpoint's
// tokenizer_config.json is recognised, not run). It produces what that template produces for
// messages with text content:
//   BOS, then the system prompts joined by blank lines, then per message
//   user:      "<｜User｜>" + text
//   assistant: "<｜Assistant｜>" + text + EOS   ("<｜tool▁outputs▁end｜>" instead of
//              "<｜Assistant｜>" when it answers tool outputs)
//   tool:      "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + text + "<｜tool▁output▁end｜>"
//              for the first, "\n<｜tool▁output▁begin｜>" + text + "<｜tool▁output▁end｜>" after
//   and "<｜Assistant｜>" to prompt a reply ("<｜tool▁outputs▁end｜>" instead after tool outputs).
// The OpenAI "developer" role counts as "system". Assistant tool calls are not represented.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace trident {

struct ChatMessage {
  std::string role;  // system | developer | user | assistant | tool
  std::string content;
};

class ChatTemplate {
 public:
  // Reads dir/tokenizer_config.json: its chat_template must be DeepSeek-V3's format, and it gives
  // the BOS and EOS token text.
  static ChatTemplate from_dir(const std::filesystem::path& dir);
  ChatTemplate(std::string bos, std::string eos) : bos_(std::move(bos)), eos_(std::move(eos)) {}

  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

 private:
  std::string bos_, eos_;
};

}  // namespace trident
