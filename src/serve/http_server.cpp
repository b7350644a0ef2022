#include "serve/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <random>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "runtime/serving_engine.h"
#include "serve/chat_template.h"
#include "serve/metrics.h"
#include "serve/openai_protocol.h"
#include "serve/tokenizer.h"

namespace trident {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// How often a handler waiting for tokens looks at its client's connection.
constexpr auto kPollInterval = 50ms;

int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// Tells whether the client of a request has gone away, without writing to it. cpp-httplib does
// not hand its socket to handlers, so the watch finds it among this process's descriptors by the
// connection's two ports, and polls it for the peer's hang-up.
class ConnectionWatch {
 public:
  explicit ConnectionWatch(const httplib::Request& req) {
    if (req.local_port <= 0 || req.remote_port <= 0) return;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      int fd = -1;
      try {
        fd = std::stoi(entry.path().filename().string());
      } catch (const std::exception&) {
        continue;
      }
      struct stat st {};
      if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
      sockaddr_storage local{}, peer{};
      socklen_t ll = sizeof local, pl = sizeof peer;
      if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 ||
          getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0)
        continue;
      if (port_of(local) == req.local_port && port_of(peer) == req.remote_port) {
        fd_ = fd;
        return;
      }
    }
  }

  bool closed() const {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
  }

 private:
  int fd_ = -1;
};

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{}{:016x}", prefix, rng());
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

struct HttpServer::Impl {
  ServingEngine& engine;
  const Tokenizer& tokenizer;
  const ChatTemplate* chat_template;
  int vocab_size;
  ServerMetrics& metrics;
  HttpServerOptions options;
  int context;
  httplib::Server server;
  int listen_fd = -1;

  Impl(ServingEngine& e, const Tokenizer& t, const ChatTemplate* c, int vocab, ServerMetrics& m,
       const HttpServerOptions& o)
      : engine(e),
        tokenizer(t),
        chat_template(c),
        vocab_size(vocab),
        metrics(m),
        options(o),
        context(e.options().scheduler.max_context) {
    if (options.max_tokens_limit <= 0) options.max_tokens_limit = context;
    routes();
  }

  void routes();
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  // Counted here, before the client can see the response, so /metrics right after it agrees.
  void error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(error_body(e), "application/json");
    metrics.error_response(e.status);
  }
};

namespace {

// One generation request from submission to its last token: turns the engine's tokens into
// text (stop strings cut it), logprobs and timings.
struct Session {
  const Tokenizer& tokenizer;
  ServerMetrics& metrics;
  bool chat;
  std::string endpoint, id, model;
  int64_t created = unix_time();
  SamplingFields fields;
  int prompt_tokens = 0;
  std::shared_ptr<RequestStream> stream;
  StreamDecoder decoder;
  StopMatcher stop;
  Clock::time_point arrival, first_token, last_token;
  int completion_tokens = 0;
  size_t text_offset = 0;  // bytes of text sent so far (completions logprobs)
  std::string finish_reason;
  RequestEnd end;
  bool done = false, recorded = false, sent_role = false;

  Session(const Tokenizer& t, ServerMetrics& m, bool chat, SamplingFields f, Clock::time_point at)
      : tokenizer(t),
        metrics(m),
        chat(chat),
        endpoint(chat ? "chat_completions" : "completions"),
        id(random_id(chat ? "chatcmpl-" : "cmpl-")),
        fields(std::move(f)),
        decoder(t),
        stop(fields.stop),
        arrival(at) {}

  struct Piece {
    std::string text;
    std::vector<TokenLogprob> logprobs;
  };

  TokenLogprob logprob_of(const TokenEvent& ev) const {
    TokenLogprob lp{tokenizer.decode({ev.token}), ev.logprob, {}};
    for (const auto& [token, value] : ev.top_logprobs)
      lp.top.emplace_back(tokenizer.decode({token}), value);
    return lp;
  }

  // Waits up to `wait` for tokens and returns the text they add.
  Piece next(Clock::duration wait) {
    Piece p;
    std::vector<TokenEvent> events;
    const bool ended = stream->wait(events, wait);
    for (const TokenEvent& ev : events) {
      if (stop.stopped()) break;
      const auto now = Clock::now();
      if (completion_tokens++ == 0) first_token = now;
      last_token = now;
      if (fields.logprobs) p.logprobs.push_back(logprob_of(ev));
      p.text += stop.push(tokenizer.is_special(ev.token) ? "" : decoder.push(ev.token));
      // The engine may have run a little past the stop string: those tokens are dropped.
      if (stop.stopped()) stream->cancel();
    }
    if (ended) {
      end = stream->ended();
      if (!stop.stopped()) {
        p.text += stop.push(decoder.finish());
        p.text += stop.flush();
      }
      finish_reason = stop.stopped() ? "stop" : end.finish_reason;
      done = true;
    }
    return p;
  }

  void client_gone() {
    stream->cancel();
    finish_reason = "cancelled";
  }

  Usage usage() const { return {prompt_tokens, completion_tokens, end.cached_prompt_tokens}; }

  json logprobs_json(const std::vector<TokenLogprob>& lps) {
    if (!fields.logprobs) return nullptr;
    json j = chat ? chat_logprobs(lps) : completion_logprobs(lps, text_offset);
    return j;
  }

  // The failure to report when the engine did not finish the request normally.
  std::optional<ApiError> failure() const {
    if (finish_reason == "error")
      return ApiError(500, "server_error", fmt::format("generation failed: {}", end.error));
    if (finish_reason == "timeout")
      return ApiError(503, "server_error", fmt::format("the request never started: {}", end.error),
                      "", "queue_timeout");
    if (finish_reason == "cancelled")
      return ApiError(503, "server_error",
                      fmt::format("the request was cancelled: {}",
                                  end.error.empty() ? "by the server" : end.error));
    return std::nullopt;
  }

  void record() {
    if (recorded) return;
    recorded = true;
    RequestRecord r;
    r.endpoint = endpoint;
    r.finish_reason = finish_reason.empty() ? "cancelled" : finish_reason;
    r.prompt_tokens = prompt_tokens;
    r.completion_tokens = completion_tokens;
    const auto end_time = completion_tokens > 0 ? last_token : Clock::now();
    if (completion_tokens > 0) r.ttft_s = seconds(first_token - arrival);
    if (completion_tokens > 1)
      r.tpot_s = seconds(last_token - first_token) / (completion_tokens - 1);
    r.e2e_s = seconds(end_time - arrival);
    metrics.request_finished(r);
  }

  // The SSE events for a piece of text; empty when there is nothing to send.
  std::string events(const Piece& p) {
    std::string out;
    if (chat && !sent_role) {
      out += sse_event(chat_chunk(id, created, model, {{"role", "assistant"}, {"content", ""}},
                                  nullptr, nullptr));
      sent_role = true;
    }
    if (!p.text.empty() || !p.logprobs.empty()) {
      json lp = logprobs_json(p.logprobs);
      out += sse_event(chat ? chat_chunk(id, created, model, {{"content", p.text}}, nullptr, lp)
                            : completion_chunk(id, created, model, p.text, nullptr, lp));
      text_offset += p.text.size();
    }
    return out;
  }

  // The closing events: the finish reason (or the error), usage when asked for, [DONE].
  std::string closing_events() {
    std::string out;
    if (auto f = failure()) {
      out += "data: " + error_body(*f) + "\n\n";
    } else {
      out += sse_event(chat ? chat_chunk(id, created, model, json::object(), finish_reason, nullptr)
                            : completion_chunk(id, created, model, "", finish_reason, nullptr));
      if (fields.include_usage)
        out += sse_event(usage_chunk(id, created, model,
                                     chat ? "chat.completion.chunk" : "text_completion", usage()));
    }
    out += kSseDone;
    return out;
  }
};

}  // namespace

void HttpServer::Impl::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const auto arrival = Clock::now();
  std::shared_ptr<Session> s;
  try {
    std::vector<int32_t> prompt;
    SamplingFields fields;
    auto check_model = [&](const std::string& model) {
      if (!model.empty() && model != options.model_name)
        throw ApiError(404, "invalid_request_error",
                       fmt::format("the model '{}' does not exist: this server serves '{}'", model,
                                   options.model_name),
                       "model", "model_not_found");
    };
    if (chat) {
      ChatRequest r = parse_chat_request(req.body);
      check_model(r.model);
      if (!chat_template)
        throw invalid_request(
            "this model has no chat template (tokenizer_config.json has no chat_template); use "
            "/v1/completions");
      std::vector<ChatMessage> messages;
      // OpenAI's newer name for system instructions.
      for (const ChatRequestMessage& m : r.messages)
        messages.push_back({m.role == "developer" ? "system" : m.role, m.content});
      prompt = tokenizer.encode(chat_template->render(messages, true));
      fields = std::move(r);
    } else {
      CompletionRequest r = parse_completion_request(req.body);
      check_model(r.model);
      if (r.prompt_is_tokens) {
        prompt = r.prompt_tokens;
        for (size_t i = 0; i < prompt.size(); ++i)
          if (prompt[i] >= vocab_size)
            throw invalid_request(fmt::format("prompt token {} is {}, outside the model's "
                                              "vocabulary of {} tokens",
                                              i, prompt[i], vocab_size),
                                  "prompt");
      } else {
        prompt = tokenizer.encode(r.prompt);
        // Text prompts start with BOS, as `trident generate` and the chat template do.
        if (tokenizer.bos_id() >= 0) prompt.insert(prompt.begin(), tokenizer.bos_id());
      }
      fields = std::move(r);
    }
    if (prompt.empty()) throw invalid_request("the prompt is empty", "prompt");
    const int max_tokens =
        resolve_max_tokens(fields.max_tokens, int(prompt.size()), context, options.max_tokens_limit,
                           chat ? options.max_tokens_limit : options.default_completion_tokens);

    GenerationRequest g;
    g.prompt = prompt;
    g.max_new_tokens = max_tokens;
    g.sampling.temperature = fields.temperature;
    g.sampling.top_p = fields.top_p;
    g.sampling.top_k = fields.top_k;
    g.sampling.seed = fields.seed ? *fields.seed : std::random_device{}();
    g.logprobs = fields.logprobs;
    g.top_logprobs = fields.logprobs ? fields.top_logprobs : 0;
    g.ignore_eos = fields.ignore_eos;

    s = std::make_shared<Session>(tokenizer, metrics, chat, std::move(fields), arrival);
    s->model = options.model_name;
    s->prompt_tokens = int(prompt.size());
    s->stream = engine.submit(std::move(g));
    if (!s->stream)
      throw ApiError(429, "rate_limit_error",
                     fmt::format("the server is already handling its limit of {} requests "
                                 "(--max-requests); retry later",
                                 engine.options().max_requests),
                     "", "rate_limit_exceeded");
  } catch (const ApiError& e) {
    error(res, e);
    return;
  } catch (const Error& e) {
    error(res, invalid_request(e.what()));
    return;
  }
  metrics.request_started(s->endpoint);
  auto watch = std::make_shared<ConnectionWatch>(req);

  if (s->fields.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [s, watch](size_t, httplib::DataSink& sink) {
          std::string out = s->events(s->next(kPollInterval));
          if (s->done) out += s->closing_events();
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            s->client_gone();
            return false;
          }
          if (s->done) {
            s->record();
            sink.done();
          } else if (out.empty() && watch->closed()) {
            s->client_gone();
            return false;
          }
          return true;
        },
        [s](bool) {
          if (!s->done) s->client_gone();
          s->record();
        });
    return;
  }

  std::string text;
  std::vector<TokenLogprob> logprobs;
  while (!s->done) {
    Session::Piece p = s->next(kPollInterval);
    text += p.text;
    logprobs.insert(logprobs.end(), p.logprobs.begin(), p.logprobs.end());
    if (!s->done && watch->closed()) {
      s->client_gone();
      s->record();
      error(res, ApiError(499, "invalid_request_error", "the client closed the connection"));
      return;
    }
  }
  s->record();
  if (auto f = s->failure()) {
    error(res, *f);
    return;
  }
  json lp = s->logprobs_json(logprobs);
  json body =
      chat ? chat_response(s->id, s->created, s->model, text, s->finish_reason, lp, s->usage())
           : completion_response(s->id, s->created, s->model, text, s->finish_reason, lp,
                                 s->usage());
  res.set_content(dump_json(body), "application/json");
}

void HttpServer::Impl::routes() {
  server.set_payload_max_length(options.max_body_bytes);
  // cpp-httplib listens with a backlog of 5: a burst of clients connecting at once overflows it
  // and their connections fail. Keep the listening socket to listen again with a deeper queue.
  server.set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = sock;
  });
  // Every request in flight holds a handler thread (streams for their whole length), plus a
  // few for requests turned away and for /metrics and /health.
  const size_t threads = size_t(engine.options().max_requests) + 16;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };

  server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const bool guarded = req.path.rfind("/v1/", 0) == 0 || req.path.rfind("/admin/", 0) == 0;
    if (options.api_key.empty() || !guarded) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    error(res, ApiError(401, "invalid_request_error",
                        req.has_header("Authorization")
                            ? "the API key is not valid: send 'Authorization: Bearer <key>' with "
                              "the server's --api-key"
                            : "this server needs an API key: send 'Authorization: Bearer <key>'",
                        "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });

  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string message;
        if (res.status == 404)
          message = fmt::format("there is no {} {} on this server", req.method, req.path);
        else if (res.status == 413)
          message = fmt::format(
              "the request body is larger than this server's limit of {} bytes "
              "(--max-body-bytes)",
              options.max_body_bytes);
        else
          message = fmt::format("the HTTP request could not be served (status {})", res.status);
        error(res, ApiError(res.status, "invalid_request_error", message));
        return httplib::Server::HandlerResponse::Handled;
      }));

  server.set_exception_handler(
      [this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        spdlog::error("request failed: {}", what);
        error(res, ApiError(500, "server_error", fmt::format("internal error: {}", what)));
      });

  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(req, res, false);
  });
  server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(req, res, true);
  });
  server.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json model = {{"id", options.model_name}, {"object", "model"},
                  {"created", unix_time()},   {"owned_by", "trident"},
                  {"max_model_len", context}, {"vocab_size", vocab_size}};
    res.set_content(dump_json({{"object", "list"}, {"data", json::array({model})}}),
                    "application/json");
  });
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(engine.stats()), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (options.expert_load_json)
    server.Get("/expert_load", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(options.expert_load_json(), "application/json");
    });
  if (options.rebalance_experts)
    server.Post("/admin/rebalance_experts",
                [this](const httplib::Request&, httplib::Response& res) {
                  const std::string refused = options.rebalance_experts();
                  if (!refused.empty()) {
                    error(res, ApiError(409, "invalid_request_error",
                                        fmt::format("cannot rebalance the experts: {}", refused)));
                    return;
                  }
                  res.status = 202;
                  res.set_content(R"({"status":"rebalancing between the next two steps"})",
                                  "application/json");
                });
}

HttpServer::HttpServer(ServingEngine& engine, const Tokenizer& tokenizer, const ChatTemplate* chat,
                       int vocab_size, ServerMetrics& metrics, const HttpServerOptions& options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, chat, vocab_size, metrics, options)) {}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  const HttpServerOptions& o = impl_->options;
  int port = o.port;
  if (o.port == 0) {
    port = impl_->server.bind_to_any_port(o.host);
    TRI_CHECK(port > 0, "cannot listen on {}: no free port (is the address valid?)", o.host);
  } else {
    TRI_CHECK(impl_->server.bind_to_port(o.host, o.port),
              "cannot listen on {}:{}: the port is in use or the address is not valid here (try "
              "another --port, or --port 0 for any free one)",
              o.host, o.port);
  }
  constexpr int kListenBacklog = 1024;
  TRI_CHECK(impl_->listen_fd >= 0 && ::listen(impl_->listen_fd, kListenBacklog) == 0,
            "cannot deepen the listen queue of {}:{} to {} connections", o.host, port,
            kListenBacklog);
  return port;
}

void HttpServer::run() { impl_->server.listen_after_bind(); }

void HttpServer::stop() {
  if (impl_->server.is_running()) impl_->server.stop();
}

}  // namespace trident
