#include "serve/openai_protocol.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

namespace trident {

using json = nlohmann::json;

ApiError invalid_request(const std::string& message, const std::string& param) {
  return ApiError(400, "invalid_request_error", message, param);
}

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return dump_json({{"error", err}});
}

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

size_t invalid_utf8_offset(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = uint8_t(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return i;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return i;
      const auto cc = uint8_t(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
    i += n + 1;
  }
  return std::string_view::npos;
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  for (size_t bad; (bad = invalid_utf8_offset(text)) != std::string_view::npos;) {
    out.append(text.substr(0, bad));
    out += "\xEF\xBF\xBD";  // U+FFFD
    text.remove_prefix(bad + 1);
  }
  out.append(text);
  return out;
}

namespace {

std::string shown(const json& v) {
  std::string s = dump_json(v);
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

[[noreturn]] void wrong_type(const std::string& name, const char* want, const json& v) {
  throw invalid_request(
      fmt::format("'{}' must be {}, got {} {}", name, want, v.type_name(), shown(v)), name);
}

// The field, or null when absent or JSON null (OpenAI treats both as "not given").
const json* field(const json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& obj, const char* name, bool otherwise) {
  const json* v = field(obj, name);
  if (!v) return otherwise;
  if (!v->is_boolean()) wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

std::optional<int64_t> int_value(const std::string& name, const json* v) {
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    return u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                             : int64_t(u);
  }
  if (!v->is_number_integer()) wrong_type(name, "an integer", *v);
  return v->get<int64_t>();
}

std::optional<int64_t> get_int(const json& obj, const char* name) {
  return int_value(name, field(obj, name));
}

std::optional<int64_t> get_int_in(const json& obj, const char* name, int64_t lo, int64_t hi) {
  std::optional<int64_t> v = get_int(obj, name);
  if (v && (*v < lo || *v > hi))
    throw invalid_request(fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, *v),
                          name);
  return v;
}

std::optional<double> get_number(const json& obj, const char* name, double lo, double hi,
                                 bool lo_open = false) {
  const json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(name, "a number", *v);
  double x = v->get<double>();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
    throw invalid_request(fmt::format("'{}' must be {} {} and at most {}, got {}", name,
                                      lo_open ? "above" : "at least", lo, hi, x),
                          name);
  return x;
}

void only_value(const json& obj, const char* name, const json& supported, const char* what) {
  const json* v = field(obj, name);
  if (v && *v != supported)
    throw invalid_request(
        fmt::format("'{}' = {} is not supported: this server only does {}", name, shown(*v), what),
        name);
}

json parse_object(std::string_view body) {
  if (size_t bad = invalid_utf8_offset(body); bad != std::string_view::npos)
    throw invalid_request(
        fmt::format("the request body is not valid UTF-8: the byte 0x{:02x} at offset {} is not "
                    "part of a well-formed character",
                    uint8_t(body[bad]), bad));
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (auto at = what.find("] "); at != std::string::npos) what = what.substr(at + 2);
    throw invalid_request(fmt::format("the request body is not valid JSON: {}", what));
  }
  if (!j.is_object())
    throw invalid_request(
        fmt::format("the request body must be a JSON object, got {}", j.type_name()));
  return j;
}

void parse_sampling(const json& j, SamplingFields& r) {
  if (const json* m = field(j, "model")) {
    if (!m->is_string()) wrong_type("model", "a string", *m);
    r.model = m->get<std::string>();
  }
  r.max_tokens = get_int(j, "max_tokens");
  if (auto t = get_number(j, "temperature", 0, 2)) r.temperature = float(*t);
  if (auto p = get_number(j, "top_p", 0, 1, /*lo_open=*/true)) r.top_p = float(*p);
  if (auto k = get_int_in(j, "top_k", -1, std::numeric_limits<int32_t>::max()))
    r.top_k = *k < 0 ? 0 : int(*k);
  if (auto s = get_int(j, "seed")) r.seed = uint64_t(*s);
  if (const json* stop = field(j, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > size_t(ProtocolLimits::kMaxStop))
        throw invalid_request(fmt::format("'stop' has {} strings; at most {} are allowed",
                                          stop->size(), ProtocolLimits::kMaxStop),
                              "stop");
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) wrong_type(fmt::format("stop[{}]", i), "a string", (*stop)[i]);
        r.stop.push_back((*stop)[i].get<std::string>());
      }
    } else {
      wrong_type("stop", "a string or an array of strings", *stop);
    }
    for (const std::string& s : r.stop)
      if (s.empty()) throw invalid_request("'stop' strings must not be empty", "stop");
  }
  r.stream = get_bool(j, "stream", false);
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    if (const json* u = field(*so, "include_usage")) {
      if (!u->is_boolean()) wrong_type("stream_options.include_usage", "a boolean", *u);
      r.include_usage = u->get<bool>();
    }
  }
  r.ignore_eos = get_bool(j, "ignore_eos", false);
  if (auto n = get_int(j, "n"); n && *n != 1)
    throw invalid_request(
        fmt::format("'n' = {} is not supported: this server returns one choice per request", *n),
        "n");
  only_value(j, "presence_penalty", 0, "presence_penalty 0");
  only_value(j, "frequency_penalty", 0, "frequency_penalty 0");
  if (const json* bias = field(j, "logit_bias"); bias && !(bias->is_object() && bias->empty()))
    throw invalid_request("'logit_bias' is not supported", "logit_bias");
}

CompletionRequest parse_prompt(const json& j, CompletionRequest r) {
  const json* p = field(j, "prompt");
  if (!p) throw invalid_request("'prompt' is required", "prompt");
  const char* shape = "a string, an array of token ids, or a one-element array of either";
  auto token_ids = [&](const json& a, const std::string& name) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < a.size(); ++i) {
      const json& t = a[i];
      if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
          t.get<int64_t>() > std::numeric_limits<int32_t>::max())
        throw invalid_request(
            fmt::format("'{}[{}]' must be a token id (an integer >= 0), got {}", name, i, shown(t)),
            "prompt");
      ids.push_back(int32_t(t.get<int64_t>()));
    }
    return ids;
  };
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    return r;
  }
  if (!p->is_array()) wrong_type("prompt", shape, *p);
  if (p->empty()) throw invalid_request("'prompt' is an empty array", "prompt");
  const json& first = (*p)[0];
  if (first.is_number()) {
    r.prompt_tokens = token_ids(*p, "prompt");
    r.prompt_is_tokens = true;
    return r;
  }
  if (p->size() > 1)
    throw invalid_request(
        fmt::format("'prompt' holds {} prompts; this server takes one prompt per request",
                    p->size()),
        "prompt");
  if (first.is_string()) {
    r.prompt = first.get<std::string>();
  } else if (first.is_array()) {
    r.prompt_tokens = token_ids(first, "prompt[0]");
    r.prompt_is_tokens = true;
  } else {
    wrong_type("prompt", shape, *p);
  }
  return r;
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body) {
  json j = parse_object(body);
  CompletionRequest r;
  parse_sampling(j, r);
  if (auto n = get_int_in(j, "logprobs", 0, ProtocolLimits::kMaxTopLogprobs)) {
    r.logprobs = true;
    r.top_logprobs = int(*n);
  }
  only_value(j, "echo", false, "echo false");
  if (auto b = get_int(j, "best_of"); b && *b != 1)
    throw invalid_request(fmt::format("'best_of' = {} is not supported: only 1", *b), "best_of");
  only_value(j, "suffix", "", "no suffix");
  return parse_prompt(j, std::move(r));
}

ChatRequest parse_chat_request(std::string_view body) {
  json j = parse_object(body);
  ChatRequest r;
  parse_sampling(j, r);
  if (auto m = get_int(j, "max_completion_tokens")) r.max_tokens = m;
  r.logprobs = get_bool(j, "logprobs", false);
  if (auto n = get_int_in(j, "top_logprobs", 0, ProtocolLimits::kMaxTopLogprobs)) {
    if (!r.logprobs) throw invalid_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    r.top_logprobs = int(*n);
  }
  const json* messages = field(j, "messages");
  if (!messages) throw invalid_request("'messages' is required", "messages");
  if (!messages->is_array()) wrong_type("messages", "an array", *messages);
  if (messages->empty()) throw invalid_request("'messages' is empty", "messages");
  static const std::vector<std::string> roles = {"system", "developer", "user", "assistant"};
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) wrong_type(at, "an object", m);
    const json* role = field(m, "role");
    if (!role) throw invalid_request(fmt::format("'{}.role' is required", at), "messages");
    if (!role->is_string()) wrong_type(at + ".role", "a string", *role);
    ChatRequestMessage msg{role->get<std::string>(), ""};
    if (std::find(roles.begin(), roles.end(), msg.role) == roles.end())
      throw invalid_request(fmt::format("'{}.role' is '{}'; it must be one of system, developer, "
                                        "user, assistant (tools are not supported)",
                                        at, msg.role),
                            "messages");
    if (const json* content = field(m, "content")) {
      if (content->is_string()) {
        msg.content = content->get<std::string>();
      } else if (content->is_array()) {
        for (size_t k = 0; k < content->size(); ++k) {
          const json& part = (*content)[k];
          const std::string pat = fmt::format("{}.content[{}]", at, k);
          if (!part.is_object()) wrong_type(pat, "an object", part);
          const json* type = field(part, "type");
          if (!type || !type->is_string() || *type != "text")
            throw invalid_request(fmt::format("'{}.type' is {}; only text parts are supported", pat,
                                              type ? shown(*type) : "missing"),
                                  "messages");
          const json* text = field(part, "text");
          if (!text || !text->is_string())
            wrong_type(pat + ".text", "a string", text ? *text : json(nullptr));
          msg.content += text->get<std::string>();
        }
      } else {
        wrong_type(at + ".content", "a string or an array of text parts", *content);
      }
    } else if (msg.role != "assistant") {
      throw invalid_request(fmt::format("'{}.content' is required", at), "messages");
    }
    r.messages.push_back(std::move(msg));
  }
  return r;
}

int resolve_max_tokens(std::optional<int64_t> requested, int prompt_tokens, int context, int limit,
                       int default_tokens) {
  const int room = context - prompt_tokens;
  if (room < 1)
    throw invalid_request(
        fmt::format("the prompt has {} tokens, but the model's context holds {} tokens in all "
                    "(prompt and completion); shorten the prompt",
                    prompt_tokens, context),
        "prompt");
  if (!requested) return std::min({default_tokens, limit, room});
  if (*requested < 1)
    throw invalid_request(fmt::format("'max_tokens' must be at least 1, got {}", *requested),
                          "max_tokens");
  if (*requested > limit)
    throw invalid_request(
        fmt::format("'max_tokens' is {}, above this server's limit of {}", *requested, limit),
        "max_tokens");
  if (*requested > room)
    throw invalid_request(
        fmt::format("'max_tokens' is {}, but the {}-token prompt leaves room for {} in the "
                    "model's {}-token context; lower max_tokens or shorten the prompt",
                    *requested, prompt_tokens, room, context),
        "max_tokens");
  return int(*requested);
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return "";
  pending_ += text;
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Keep the longest tail that a stop string starts with: the next text may complete it.
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(pending_);
  return stopped_ ? "" : out;
}

namespace {

json bytes_of(const std::string& s) {
  json b = json::array();
  for (char c : s) b.push_back(int(uint8_t(c)));
  return b;
}

}  // namespace

json completion_logprobs(const std::vector<TokenLogprob>& tokens, size_t text_offset) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const TokenLogprob& t : tokens) {
    out["tokens"].push_back(t.token);
    out["token_logprobs"].push_back(t.logprob);
    // Keys as the client will see them: tokens that differ only in bytes that are not UTF-8
    // collapse to one key, which keeps the larger logprob (the list comes most likely first).
    json top = json::object();
    for (const auto& [tok, lp] : t.top)
      if (std::string key = valid_utf8(tok); !top.contains(key)) top[key] = lp;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(text_offset);
    text_offset += t.token.size();
  }
  return out;
}

json chat_logprobs(const std::vector<TokenLogprob>& tokens) {
  json content = json::array();
  for (const TokenLogprob& t : tokens) {
    json top = json::array();
    for (const auto& [tok, lp] : t.top)
      top.push_back({{"token", tok}, {"logprob", lp}, {"bytes", bytes_of(tok)}});
    content.push_back({{"token", t.token},
                       {"logprob", t.logprob},
                       {"bytes", bytes_of(t.token)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::string& text, const json& finish_reason, const json& logprobs,
                         const Usage& usage) {
  json r = completion_chunk(id, created, model, text, finish_reason, logprobs);
  r["usage"] = usage_json(usage);
  return r;
}

json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                      const std::string& text, const json& finish_reason, const json& logprobs) {
  json choice = {
      {"index", 0}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish_reason}};
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

json chat_response(const std::string& id, int64_t created, const std::string& model,
                   const std::string& content, const json& finish_reason, const json& logprobs,
                   const Usage& usage) {
  json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", content}}},
                 {"logprobs", logprobs},
                 {"finish_reason", finish_reason}};
  return {{"id", id},       {"object", "chat.completion"},      {"created", created},
          {"model", model}, {"choices", json::array({choice})}, {"usage", usage_json(usage)}};
}

json chat_chunk(const std::string& id, int64_t created, const std::string& model, const json& delta,
                const json& finish_reason, const json& logprobs) {
  json choice = {
      {"index", 0}, {"delta", delta}, {"logprobs", logprobs}, {"finish_reason", finish_reason}};
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

json usage_chunk(const std::string& id, int64_t created, const std::string& model,
                 const std::string& object, const Usage& usage) {
  return {{"id", id},       {"object", object},         {"created", created},
          {"model", model}, {"choices", json::array()}, {"usage", usage_json(usage)}};
}

}  // namespace trident
