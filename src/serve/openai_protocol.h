// The OpenAI API as Trident speaks it: parsing and validating /v1/completions and
// /v1/chat/completions bodies, OpenAI-style error bodies, and the response, chunk and logprobs
// objects. No I/O and no model here: the HTTP server glues this to the tokenizer and the engine.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace trident {

// A request the API refuses: HTTP status, OpenAI error type and a message naming the problem.
struct ApiError : std::runtime_error {
  int status;
  std::string type;
  std::string param;
  std::string code;
  ApiError(int status, std::string type, const std::string& message, std::string param = "",
           std::string code = "")
      : std::runtime_error(message),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
};

ApiError invalid_request(const std::string& message, const std::string& param = "");

// {"error": {"message", "type", "param", "code"}}
std::string error_body(const ApiError& error);

// The fields both endpoints share.
struct SamplingFields {
  std::string model;  // empty: not given
  std::optional<int64_t> max_tokens;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;  // 0: no limit (-1 accepted as the same)
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // an extension: generate max_tokens tokens whatever comes
  bool logprobs = false;
  int top_logprobs = 0;
};

struct CompletionRequest : SamplingFields {
  std::string prompt;                  // text, or
  std::vector<int32_t> prompt_tokens;  // token ids (prompt_is_tokens)
  bool prompt_is_tokens = false;
};

struct ChatRequestMessage {
  std::string role;
  std::string content;
};

struct ChatRequest : SamplingFields {
  std::vector<ChatRequestMessage> messages;
};

struct ProtocolLimits {
  static constexpr int kMaxStop = 4;
  static constexpr int kMaxTopLogprobs = 20;
};

// Both throw ApiError (400) naming the field and the value when the body is not valid UTF-8,
// not JSON, not an object, or a field has the wrong type or an unsupported value.
CompletionRequest parse_completion_request(std::string_view body);
ChatRequest parse_chat_request(std::string_view body);

// max_tokens for a prompt: the requested value, or `default_tokens` cut to what the context
// leaves. Throws ApiError when the prompt fills the context, or when max_tokens is below 1, above
// `limit` or does not fit in the context beside the prompt.
int resolve_max_tokens(std::optional<int64_t> requested, int prompt_tokens, int context, int limit,
                       int default_tokens);

// The offset of the first byte that is not part of valid UTF-8, or npos.
size_t invalid_utf8_offset(std::string_view text);
// The text with each byte that is not part of valid UTF-8 replaced by U+FFFD.
std::string valid_utf8(std::string_view text);

// Holds back generated text that may be the start of a stop string, and cuts the text at the
// first stop string found.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds generated text; returns what can be shown now. Once a stop string appears, returns the
  // text before it and stopped() turns true; later pushes return nothing.
  std::string push(std::string_view text);
  // At the end of generation: the text held back.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

// One generated token for logprobs: its text, logprob and the most likely alternatives.
struct TokenLogprob {
  std::string token;
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
};

// The legacy completions form: {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
// text offsets count from `text_offset`.
nlohmann::json completion_logprobs(const std::vector<TokenLogprob>& tokens, size_t text_offset);
// The chat form: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
nlohmann::json chat_logprobs(const std::vector<TokenLogprob>& tokens);

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};
nlohmann::json usage_json(const Usage& usage);

// Response objects. finish_reason and logprobs may be null.
nlohmann::json completion_response(const std::string& id, int64_t created, const std::string& model,
                                   const std::string& text, const nlohmann::json& finish_reason,
                                   const nlohmann::json& logprobs, const Usage& usage);
nlohmann::json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                                const std::string& text, const nlohmann::json& finish_reason,
                                const nlohmann::json& logprobs);
nlohmann::json chat_response(const std::string& id, int64_t created, const std::string& model,
                             const std::string& content, const nlohmann::json& finish_reason,
                             const nlohmann::json& logprobs, const Usage& usage);
// `delta` is {"role": "assistant"} first, then {"content": text}, and {} with the finish reason.
nlohmann::json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                          const nlohmann::json& delta, const nlohmann::json& finish_reason,
                          const nlohmann::json& logprobs);
// A streamed response's last chunk when the client asked for usage: no choices, only usage.
nlohmann::json usage_chunk(const std::string& id, int64_t created, const std::string& model,
                           const std::string& object, const Usage& usage);

// Serializes JSON for the wire; bytes that are not UTF-8 (a token that ends inside a character)
// become U+FFFD instead of failing.
std::string dump_json(const nlohmann::json& j);
// One server-sent event: "data: <json>\n\n".
std::string sse_event(const nlohmann::json& j);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace trident
