// The OpenAI-compatible HTTP server: POST /v1/completions and /v1/chat/completions (streamed
// over server-sent events or whole), GET /v1/models, /health and /metrics; GET /expert_load
// and POST /admin/rebalance_experts for the expert load balancer. Handler threads
// parse and validate, tokenize, submit to the serving engine and turn its tokens into text; a
// client that goes away cancels its request, which frees its KV pages.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace trident {

class ServingEngine;
class ServerMetrics;
class Tokenizer;
class ChatTemplate;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;         // 0: any free port (bind() tells which)
  std::string api_key;     // empty: no key needed
  std::string model_name;  // the name clients give as "model"
  size_t max_body_bytes = 4 << 20;
  int max_tokens_limit = 0;            // largest max_tokens accepted; 0: the context length
  int default_completion_tokens = 16;  // /v1/completions without max_tokens, as OpenAI does
  // GET /expert_load: the routed experts' token counts (JSON, expert_load.h); unset: 404.
  std::function<std::string()> expert_load_json;
  // POST /admin/rebalance_experts (API key required when there is one): asks the ranks to move
  // experts between the next two steps; returns why it cannot, empty when it will. Unset: 404.
  std::function<std::string()> rebalance_experts;
};

class HttpServer {
 public:
  // `chat` may be null (the model has no chat template): chat completions are then refused.
  HttpServer(ServingEngine& engine, const Tokenizer& tokenizer, const ChatTemplate* chat,
             int vocab_size, ServerMetrics& metrics, const HttpServerOptions& options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the address and returns the port; throws trident::Error when it cannot.
  int bind();
  // Serves until stop() (from another thread).
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace trident
