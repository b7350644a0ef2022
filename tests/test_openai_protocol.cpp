// The OpenAI protocol layer: request parsing and validation (each refusal names the problem),
// max_tokens resolution, UTF-8 checks, stop strings, and the response objects.
#include <gtest/gtest.h>

#include "serve/openai_protocol.h"

using namespace trident;
using json = nlohmann::json;

namespace {

// The ApiError a body gets, or a failure when it is accepted.
ApiError refusal(std::string_view body, bool chat = false) {
  try {
    if (chat)
      parse_chat_request(body);
    else
      parse_completion_request(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "", "");
}

void expect_refused(std::string_view body, std::initializer_list<std::string_view> words,
                    bool chat = false) {
  ApiError e = refusal(body, chat);
  EXPECT_EQ(e.status, 400) << body;
  EXPECT_EQ(e.type, "invalid_request_error");
  for (std::string_view w : words)
    EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
}

}  // namespace

TEST(OpenAiProtocol, ParsesACompletionRequest) {
  CompletionRequest r = parse_completion_request(R"({
    "model": "m", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
    "top_k": 40, "seed": 3, "stop": ["\n", "END"], "stream": true,
    "stream_options": {"include_usage": true}, "logprobs": 2, "ignore_eos": true,
    "presence_penalty": 0, "user": "someone", "n": 1})");
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt, "Hello");
  EXPECT_FALSE(r.prompt_is_tokens);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.top_p, 0.9f);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_EQ(r.seed, 3u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs && r.ignore_eos);
  EXPECT_EQ(r.top_logprobs, 2);
}

TEST(OpenAiProtocol, DefaultsFollowOpenAi) {
  CompletionRequest r =
      parse_completion_request(R"({"prompt": "x", "max_tokens": null, "stop": null})");
  EXPECT_FALSE(r.max_tokens);
  EXPECT_FLOAT_EQ(r.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.top_p, 1.0f);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_FALSE(r.seed);
  EXPECT_FALSE(r.stream || r.logprobs);
  EXPECT_EQ(parse_completion_request(R"({"prompt": "x", "top_k": -1})").top_k, 0);
}

TEST(OpenAiProtocol, PromptsAsTextOrTokenIds) {
  EXPECT_EQ(parse_completion_request(R"({"prompt": ["one"]})").prompt, "one");
  CompletionRequest ids = parse_completion_request(R"({"prompt": [5, 6, 7]})");
  EXPECT_TRUE(ids.prompt_is_tokens);
  EXPECT_EQ(ids.prompt_tokens, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(parse_completion_request(R"({"prompt": [[8, 9]]})").prompt_tokens,
            (std::vector<int32_t>{8, 9}));
  expect_refused(R"({"prompt": ["a", "b"]})", {"2 prompts", "one prompt per request"});
  expect_refused(R"({"prompt": [1, -2]})", {"prompt[1]", "token id"});
  expect_refused(R"({"prompt": []})", {"empty"});
  expect_refused(R"({"prompt": {"text": "x"}})", {"prompt", "object"});
  expect_refused(R"({"max_tokens": 3})", {"'prompt' is required"});
}

TEST(OpenAiProtocol, ParsesAChatRequest) {
  ChatRequest r = parse_chat_request(R"({
    "model": "m", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}],
    "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 3})");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1].role, "user");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.max_tokens, 9);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
}

TEST(OpenAiProtocol, BadChatMessagesAreNamed) {
  expect_refused(R"({})", {"'messages' is required"}, true);
  expect_refused(R"({"messages": "hi"})", {"messages", "array", "string"}, true);
  expect_refused(R"({"messages": []})", {"empty"}, true);
  expect_refused(R"({"messages": [{"content": "x"}]})", {"messages[0].role"}, true);
  expect_refused(R"({"messages": [{"role": "robot", "content": "x"}]})", {"robot"}, true);
  expect_refused(R"({"messages": [{"role": "user"}]})", {"messages[0].content"}, true);
  expect_refused(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                 {"messages[0].content[0]", "image_url", "text"}, true);
  expect_refused(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})",
                 {"logprobs"}, true);
}

TEST(OpenAiProtocol, MalformedBodiesAreRefused) {
  expect_refused(R"({"prompt": "x",)", {"not valid JSON", "line 1"});
  expect_refused(R"([1, 2])", {"JSON object", "array"});
  expect_refused("", {"not valid JSON"});
  expect_refused("{\"prompt\": \"caf\xc3\x28\"}", {"UTF-8", "0xc3 at offset 15"});
}

TEST(OpenAiProtocol, WrongTypesAndValuesNameTheFieldAndTheValue) {
  expect_refused(R"({"prompt": "x", "max_tokens": "8"})", {"'max_tokens'", "integer", "\"8\""});
  expect_refused(R"({"prompt": "x", "max_tokens": 1.5})", {"'max_tokens'", "integer", "1.5"});
  expect_refused(R"({"prompt": "x", "temperature": "warm"})", {"'temperature'", "number"});
  expect_refused(R"({"prompt": "x", "temperature": 2.5})", {"'temperature'", "2.5"});
  expect_refused(R"({"prompt": "x", "top_p": 0})", {"'top_p'", "above 0"});
  expect_refused(R"({"prompt": "x", "top_p": 1.2})", {"'top_p'"});
  expect_refused(R"({"prompt": "x", "top_k": -3})", {"'top_k'", "-3"});
  expect_refused(R"({"prompt": "x", "stop": 1})", {"'stop'"});
  expect_refused(R"({"prompt": "x", "stop": ["a", 2]})", {"stop[1]"});
  expect_refused(R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})",
                 {"5 strings", "at most 4"});
  expect_refused(R"({"prompt": "x", "stop": [""]})", {"empty"});
  expect_refused(R"({"prompt": "x", "stream": 1})", {"'stream'", "boolean"});
  expect_refused(R"({"prompt": "x", "logprobs": 21})", {"'logprobs'", "20"});
  expect_refused(R"({"prompt": "x", "n": 3})", {"'n'", "one choice"});
  expect_refused(R"({"prompt": "x", "echo": true})", {"'echo'"});
  expect_refused(R"({"prompt": "x", "frequency_penalty": 0.5})", {"frequency_penalty"});
  expect_refused(R"({"prompt": "x", "logit_bias": {"5": 10}})", {"logit_bias"});
  expect_refused(R"({"prompt": "x", "model": 5})", {"'model'", "string"});
}

TEST(OpenAiProtocol, MaxTokensMustFitTheLimitAndTheContext) {
  EXPECT_EQ(resolve_max_tokens(std::nullopt, 10, 100, 50, 16), 16);
  EXPECT_EQ(resolve_max_tokens(std::nullopt, 95, 100, 50, 16), 5);  // cut to the context
  EXPECT_EQ(resolve_max_tokens(std::nullopt, 10, 100, 50, 100), 50);
  EXPECT_EQ(resolve_max_tokens(40, 10, 100, 50, 16), 40);
  auto error_of = [](std::optional<int64_t> req, int prompt) {
    try {
      resolve_max_tokens(req, prompt, 100, 50, 16);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(error_of(0, 10).find("at least 1, got 0"), std::string::npos);
  EXPECT_NE(error_of(-4, 10).find("got -4"), std::string::npos);
  EXPECT_NE(error_of(51, 10).find("limit of 50"), std::string::npos);
  EXPECT_NE(error_of(int64_t(1) << 40, 10).find("limit"), std::string::npos);
  EXPECT_NE(error_of(20, 90).find("room for 10"), std::string::npos);
  EXPECT_NE(error_of(std::nullopt, 100).find("100 tokens"), std::string::npos);
  EXPECT_NE(error_of(5, 150).find("shorten the prompt"), std::string::npos);
}

TEST(OpenAiProtocol, Utf8Validation) {
  EXPECT_EQ(invalid_utf8_offset("plain ascii"), std::string_view::npos);
  EXPECT_EQ(invalid_utf8_offset("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            std::string_view::npos);
  EXPECT_EQ(invalid_utf8_offset("ab\xff"), 2u);
  EXPECT_EQ(invalid_utf8_offset("ab\xc3"), 2u);            // truncated
  EXPECT_EQ(invalid_utf8_offset("\xc0\xaf"), 0u);          // overlong
  EXPECT_EQ(invalid_utf8_offset("x\xed\xa0\x80"), 1u);     // a UTF-16 surrogate
  EXPECT_EQ(invalid_utf8_offset("\xf4\x90\x80\x80"), 0u);  // past U+10FFFF
  EXPECT_EQ(valid_utf8("a\xffz\xc3"), "a\xef\xbf\xbdz\xef\xbf\xbd");
}

TEST(OpenAiProtocol, StopStringsCutTheTextAndHoldBackPossibleStarts) {
  StopMatcher m({"END", "\n\n"});
  EXPECT_EQ(m.push("Hello E"), "Hello ");  // "E" may start "END"
  EXPECT_EQ(m.push("N"), "");
  EXPECT_EQ(m.push("Dless"), "");  // "END" found: the text stops before it
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");

  StopMatcher n({"END"});
  EXPECT_EQ(n.push("EN"), "");
  EXPECT_EQ(n.push("x"), "ENx");  // it was not a stop string after all
  EXPECT_EQ(n.push("E"), "");
  EXPECT_FALSE(n.stopped());
  EXPECT_EQ(n.flush(), "E");  // the end of generation releases what was held

  StopMatcher first({"bb", "ab"});
  EXPECT_EQ(first.push("xabb"), "x");  // the earliest match wins

  StopMatcher none({});
  EXPECT_EQ(none.push("anything"), "anything");
}

TEST(OpenAiProtocol, ErrorBodiesFollowOpenAi) {
  json e = json::parse(error_body(
      ApiError(404, "invalid_request_error", "no such model", "model", "model_not_found")));
  EXPECT_EQ(e["error"]["message"], "no such model");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "model");
  EXPECT_EQ(e["error"]["code"], "model_not_found");
  json bare = json::parse(error_body(invalid_request("bad")));
  EXPECT_TRUE(bare["error"]["param"].is_null());
  EXPECT_TRUE(bare["error"]["code"].is_null());
}

TEST(OpenAiProtocol, ResponseAndChunkObjects) {
  json r = completion_response("cmpl-1", 100, "m", "hi", "length", nullptr, {5, 2, 3});
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], "hi");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["total_tokens"], 7);
  EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 3);

  json c = chat_chunk("chatcmpl-1", 100, "m", {{"content", "x"}}, nullptr, nullptr);
  EXPECT_EQ(c["object"], "chat.completion.chunk");
  EXPECT_EQ(c["choices"][0]["delta"]["content"], "x");
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(sse_event(c).rfind("data: {", 0), 0u);
  EXPECT_EQ(sse_event(c).substr(sse_event(c).size() - 2), "\n\n");

  json u = usage_chunk("chatcmpl-1", 100, "m", "chat.completion.chunk", {5, 2, 0});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["completion_tokens"], 2);

  json chat = chat_response("chatcmpl-1", 100, "m", "yo", "stop", nullptr, {1, 1, 0});
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "yo");
}

TEST(OpenAiProtocol, LogprobsInBothForms) {
  std::vector<TokenLogprob> lps = {{"He", -0.5f, {{"He", -0.5f}, {"A", -1.5f}}},
                                   {"llo", -0.25f, {{"llo", -0.25f}}}};
  json legacy = completion_logprobs(lps, 10);
  EXPECT_EQ(legacy["tokens"], json({"He", "llo"}));
  EXPECT_EQ(legacy["text_offset"], json({10, 12}));
  EXPECT_FLOAT_EQ(legacy["top_logprobs"][0]["A"].get<float>(), -1.5f);
  json chat = chat_logprobs(lps);
  EXPECT_EQ(chat["content"][1]["token"], "llo");
  EXPECT_EQ(chat["content"][0]["bytes"], json({72, 101}));
  EXPECT_EQ(chat["content"][0]["top_logprobs"][1]["token"], "A");

  // Two tokens whose bytes are not UTF-8 show as the same key: the more likely one is kept.
  std::vector<TokenLogprob> partial = {{"\xe2", -1.0f, {{"\xe2", -1.0f}, {"\xe3", -2.0f}}}};
  json merged = completion_logprobs(partial, 0);
  ASSERT_EQ(merged["top_logprobs"][0].size(), 1u);
  EXPECT_FLOAT_EQ(merged["top_logprobs"][0]["\xef\xbf\xbd"].get<float>(), -1.0f);
  EXPECT_NO_THROW(dump_json(merged));
}
