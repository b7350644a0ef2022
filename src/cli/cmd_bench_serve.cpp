// `trident bench serve`: a load generator for an OpenAI-compatible server (this one or another).
// Prompts are random token ids of random lengths, or lines of a file; requests arrive at a given
// rate (Poisson) or all at once, optionally capped at a number in flight. Every request streams;
// the report gives request and token throughput and TTFT, TPOT, inter-token and end-to-end
// latency percentiles, as a table and optionally as JSON.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"

namespace trident::cli {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string model;
  std::string endpoint = "completions";
  std::string dataset = "random";
  int num_prompts = 100;
  int input_len = 256;
  int output_len = 64;
  double range_ratio = 1.0;
  double request_rate = std::numeric_limits<double>::infinity();
  int max_concurrency = 0;
  uint64_t seed = 0;
  bool ignore_eos = true;
  double timeout_s = 600;
  std::string output_json;
};

struct Prompt {
  json prompt;  // text, or an array of token ids
  int max_tokens;
};

struct Outcome {
  bool ok = false;
  std::string error;
  int prompt_tokens = 0;
  int output_tokens = 0;
  double ttft = 0, latency = 0;
  std::vector<double> itl;  // gaps between chunks that carried text, after the first
};

class Connection {
 public:
  explicit Connection(const BenchArgs& a) : client_(a.host, a.port) {
    const auto t = std::chrono::duration<double>(a.timeout_s);
    client_.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(t));
    client_.set_write_timeout(std::chrono::seconds(30));
    client_.set_connection_timeout(std::chrono::seconds(10));
    if (!a.api_key.empty()) client_.set_bearer_token_auth(a.api_key);
  }
  httplib::Client& client() { return client_; }

 private:
  httplib::Client client_;
};

json server_model(const BenchArgs& a) {
  Connection c(a);
  auto res = c.client().Get("/v1/models");
  TRI_CHECK(res, "cannot reach http://{}:{}/v1/models: {} (is the server running?)", a.host, a.port,
            httplib::to_string(res.error()));
  TRI_CHECK(res->status == 200, "GET /v1/models answered {}: {}", res->status, res->body);
  json models = json::parse(res->body, nullptr, false);
  TRI_CHECK(models.is_object() && models.contains("data") && !models["data"].empty(),
            "GET /v1/models listed no model: {}", res->body);
  return models["data"][0];
}

int random_len(std::mt19937_64& rng, int len, double ratio) {
  int lo = std::max(1, int(std::floor(len * ratio)));
  return std::uniform_int_distribution<int>(lo, std::max(lo, len))(rng);
}

std::vector<Prompt> make_prompts(const BenchArgs& a, const json& model) {
  std::mt19937_64 rng(a.seed);
  std::vector<Prompt> prompts;
  if (a.dataset == "random") {
    TRI_CHECK(a.endpoint == "completions",
              "the random dataset sends token ids, which only /v1/completions takes: use "
              "--endpoint completions or --dataset FILE");
    const int vocab = model.value("vocab_size", 0);
    TRI_CHECK(vocab > 2, "the server's /v1/models gives no vocab_size; use --dataset FILE");
    // Ids from the upper part of the vocabulary, away from the special tokens at its start.
    std::uniform_int_distribution<int> id(std::min(vocab - 1, 16), vocab - 1);
    for (int i = 0; i < a.num_prompts; ++i) {
      json ids = json::array();
      for (int n = random_len(rng, a.input_len, a.range_ratio); n > 0; --n) ids.push_back(id(rng));
      prompts.push_back({ids, random_len(rng, a.output_len, a.range_ratio)});
    }
    return prompts;
  }
  // A file: one prompt per line, as text or as a JSON object {"prompt", "max_tokens"}.
  std::ifstream in(a.dataset);
  TRI_CHECK(in.good(), "cannot read the prompt file {}", a.dataset);
  std::vector<Prompt> lines;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_object()) {
      TRI_CHECK(j.contains("prompt"), "{} line {}: a JSON line needs a \"prompt\"", a.dataset, n);
      lines.push_back(
          {j["prompt"], j.value("max_tokens", random_len(rng, a.output_len, a.range_ratio))});
    } else {
      lines.push_back({line, random_len(rng, a.output_len, a.range_ratio)});
    }
  }
  TRI_CHECK(!lines.empty(), "the prompt file {} has no prompts", a.dataset);
  for (int i = 0; i < a.num_prompts; ++i) prompts.push_back(lines[i % lines.size()]);
  return prompts;
}

Outcome run_one(const BenchArgs& a, const std::string& model, const Prompt& p) {
  Outcome o;
  const bool chat = a.endpoint == "chat";
  json body = {{"model", model},
               {"max_tokens", p.max_tokens},
               {"temperature", 0},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}},
               {"ignore_eos", a.ignore_eos}};
  if (chat) {
    std::string text = p.prompt.is_string() ? p.prompt.get<std::string>() : p.prompt.dump();
    body["messages"] = json::array({{{"role", "user"}, {"content", text}}});
  } else {
    body["prompt"] = p.prompt;
  }
  httplib::Request req;
  req.method = "POST";
  req.path = chat ? "/v1/chat/completions" : "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");

  const auto start = Clock::now();
  auto last = start;
  bool first = true;
  std::string buffer, error_body;
  bool streamed = false;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    streamed = true;
    for (size_t end; (end = buffer.find("\n\n")) != std::string::npos; buffer.erase(0, end + 2)) {
      std::string event = buffer.substr(0, end);
      if (event.rfind("data: ", 0) != 0) continue;
      std::string payload = event.substr(6);
      if (payload == "[DONE]") continue;
      json j = json::parse(payload, nullptr, false);
      if (!j.is_object()) continue;
      if (j.contains("error")) {
        o.error = j["error"].value("message", payload);
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        o.prompt_tokens = j["usage"].value("prompt_tokens", 0);
        o.output_tokens = j["usage"].value("completion_tokens", 0);
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const json& c = j["choices"][0];
      std::string text =
          chat ? (c.contains("delta") ? c["delta"].value("content", "") : "") : c.value("text", "");
      if (text.empty()) continue;
      const auto now = Clock::now();
      if (first) {
        o.ttft = std::chrono::duration<double>(now - start).count();
        first = false;
      } else {
        o.itl.push_back(std::chrono::duration<double>(now - last).count());
      }
      last = now;
    }
    return true;
  };
  Connection c(a);
  auto res = c.client().send(req);
  o.latency = std::chrono::duration<double>(Clock::now() - start).count();
  if (!res) {
    o.error = "connection failed: " + httplib::to_string(res.error());
  } else if (res->status != 200) {
    o.error = fmt::format("HTTP {}: {}", res->status, streamed ? buffer : res->body);
  } else if (o.error.empty()) {
    o.ok = true;
    if (first) o.ttft = o.latency;  // no text at all: count the whole request
  }
  return o;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q / 100.0 * double(v.size() - 1);
  size_t lo = size_t(std::floor(pos)), hi = size_t(std::ceil(pos));
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

json latency_stats(const std::vector<double>& seconds) {
  std::vector<double> ms(seconds.size());
  std::transform(seconds.begin(), seconds.end(), ms.begin(), [](double s) { return s * 1e3; });
  return {{"mean_ms", mean(ms)},
          {"median_ms", percentile(ms, 50)},
          {"p90_ms", percentile(ms, 90)},
          {"p99_ms", percentile(ms, 99)},
          {"max_ms", ms.empty() ? 0.0 : *std::max_element(ms.begin(), ms.end())}};
}

void print_report(const json& r) {
  auto line = [](const std::string& name, const std::string& value) {
    std::printf("%-42s %s\n", name.c_str(), value.c_str());
  };
  auto section = [](const std::string& title) {
    std::string s = "-" + title + "-";
    int pad = std::max(0, 50 - int(s.size()));
    std::printf("%s%s%s\n", std::string(pad / 2, '-').c_str(), s.c_str(),
                std::string(pad - pad / 2, '-').c_str());
  };
  std::printf("%s\n", "=============== Serving Benchmark Result ===============");
  line("Backend:", "trident (OpenAI API)");
  line("Endpoint:", r["endpoint"].get<std::string>());
  line("Traffic request rate:",
       r["request_rate"].is_null() ? "inf" : fmt::format("{}", r["request_rate"].get<double>()));
  line("Max request concurrency:", r["max_concurrency"].get<int>()
                                       ? std::to_string(r["max_concurrency"].get<int>())
                                       : "not set");
  line("Successful requests:", std::to_string(r["completed"].get<int>()));
  line("Failed requests:", std::to_string(r["failed"].get<int>()));
  line("Benchmark duration (s):", fmt::format("{:.2f}", r["duration_s"].get<double>()));
  line("Total input tokens:", std::to_string(r["total_input_tokens"].get<int64_t>()));
  line("Total generated tokens:", std::to_string(r["total_output_tokens"].get<int64_t>()));
  line("Request throughput (req/s):", fmt::format("{:.2f}", r["request_throughput"].get<double>()));
  line("Input token throughput (tok/s):",
       fmt::format("{:.2f}", r["input_throughput"].get<double>()));
  line("Output token throughput (tok/s):",
       fmt::format("{:.2f}", r["output_throughput"].get<double>()));
  line("Total token throughput (tok/s):",
       fmt::format("{:.2f}", r["total_throughput"].get<double>()));
  line("Concurrency (mean in flight):", fmt::format("{:.2f}", r["concurrency"].get<double>()));
  const std::pair<const char*, const char*> parts[] = {
      {"e2e_latency", "End-to-End Latency"},
      {"ttft", "Time to First Token"},
      {"tpot", "Time per Output Token (excl. 1st token)"},
      {"itl", "Inter-Token Latency"}};
  const char* shorts[] = {"E2E Latency", "TTFT", "TPOT", "ITL"};
  for (int i = 0; i < 4; ++i) {
    section(parts[i].second);
    const json& s = r[parts[i].first];
    line(fmt::format("Mean {} (ms):", shorts[i]),
         fmt::format("{:.2f}", s["mean_ms"].get<double>()));
    line(fmt::format("Median {} (ms):", shorts[i]),
         fmt::format("{:.2f}", s["median_ms"].get<double>()));
    line(fmt::format("P90 {} (ms):", shorts[i]), fmt::format("{:.2f}", s["p90_ms"].get<double>()));
    line(fmt::format("P99 {} (ms):", shorts[i]), fmt::format("{:.2f}", s["p99_ms"].get<double>()));
  }
  std::printf("%s\n", std::string(56, '=').c_str());
  if (r.contains("first_error"))
    std::printf("first error: %s\n", r["first_error"].get<std::string>().c_str());
  std::fflush(stdout);
}

void run_bench(const BenchArgs& a) {
  json model_card = server_model(a);
  const std::string model = a.model.empty() ? model_card.value("id", "") : a.model;
  std::vector<Prompt> prompts = make_prompts(a, model_card);

  // Arrival times: all at once, or a Poisson process at the request rate.
  std::vector<double> arrival(prompts.size(), 0.0);
  std::mt19937_64 rng(a.seed + 1);
  if (std::isfinite(a.request_rate)) {
    std::exponential_distribution<double> gap(a.request_rate);
    double t = 0;
    for (double& at : arrival) at = (t += gap(rng));
  }

  std::vector<Outcome> outcomes(prompts.size());
  std::atomic<size_t> next{0};
  std::atomic<int> in_flight{0};
  double in_flight_integral = 0;
  std::mutex integral_mutex;
  auto last_change = Clock::now();
  auto change_in_flight = [&](int delta) {
    std::lock_guard lock(integral_mutex);
    auto now = Clock::now();
    in_flight_integral +=
        in_flight.load() * std::chrono::duration<double>(now - last_change).count();
    last_change = now;
    in_flight += delta;
  };
  // One client thread per request in flight; without a cap, enough for every request to be in
  // flight at once up to a limit on threads.
  constexpr int kMaxClientThreads = 1024;
  const int workers = std::min({a.max_concurrency > 0 ? a.max_concurrency : kMaxClientThreads,
                                int(prompts.size()), kMaxClientThreads});
  spdlog::info("benchmark: {} requests to {}:{} ({}), {} at most in flight, rate {}",
               prompts.size(), a.host, a.port, model, workers, a.request_rate);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < prompts.size();) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(arrival[i])));
        change_in_flight(+1);
        outcomes[i] = run_one(a, model, prompts[i]);
        change_in_flight(-1);
      }
    });
  for (auto& t : threads) t.join();
  const double duration = std::chrono::duration<double>(Clock::now() - start).count();

  int completed = 0;
  int64_t input = 0, output = 0;
  std::vector<double> ttft, tpot, itl, e2e;
  std::string first_error;
  for (const Outcome& o : outcomes) {
    if (!o.ok) {
      if (first_error.empty()) first_error = o.error;
      continue;
    }
    ++completed;
    input += o.prompt_tokens;
    output += o.output_tokens;
    ttft.push_back(o.ttft);
    e2e.push_back(o.latency);
    if (o.output_tokens > 1) tpot.push_back((o.latency - o.ttft) / (o.output_tokens - 1));
    itl.insert(itl.end(), o.itl.begin(), o.itl.end());
  }
  json r = {{"endpoint", a.endpoint},
            {"model", model},
            {"dataset", a.dataset},
            {"num_prompts", prompts.size()},
            {"request_rate", std::isfinite(a.request_rate) ? json(a.request_rate) : json(nullptr)},
            {"max_concurrency", a.max_concurrency},
            {"completed", completed},
            {"failed", int(prompts.size()) - completed},
            {"duration_s", duration},
            {"total_input_tokens", input},
            {"total_output_tokens", output},
            {"request_throughput", completed / duration},
            {"input_throughput", double(input) / duration},
            {"output_throughput", double(output) / duration},
            {"total_throughput", double(input + output) / duration},
            {"concurrency", in_flight_integral / duration},
            {"ttft", latency_stats(ttft)},
            {"tpot", latency_stats(tpot)},
            {"itl", latency_stats(itl)},
            {"e2e_latency", latency_stats(e2e)}};
  if (!first_error.empty()) r["first_error"] = first_error;
  print_report(r);
  if (!a.output_json.empty()) {
    std::ofstream out(a.output_json);
    TRI_CHECK(out.good(), "cannot write {}", a.output_json);
    out << r.dump(2) << "\n";
  }
  TRI_CHECK(completed > 0, "no request succeeded; the first error: {}", first_error);
}

}  // namespace

void register_bench_serve(CLI::App& app) {
  CLI::App* bench = &bench_command(app);
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = bench->add_subcommand(
      "serve", "Load an OpenAI-compatible server and report throughput and latency percentiles");
  cmd->add_option("--host", args->host, "Server address");
  cmd->add_option("--port,-p", args->port, "Server port")->check(CLI::Range(1, 65535));
  cmd->add_option("--api-key", args->api_key, "Sent as 'Authorization: Bearer KEY'");
  cmd->add_option("--model", args->model, "Model name to request (default: the server's first)");
  cmd->add_option("--endpoint", args->endpoint, "completions or chat")
      ->check(CLI::IsMember({"completions", "chat"}));
  cmd->add_option("--dataset", args->dataset,
                  "'random' (random token ids), or a file of prompts: one per line, as text or as "
                  "JSON {\"prompt\", \"max_tokens\"}");
  cmd->add_option("--num-prompts,-n", args->num_prompts, "Requests to send")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--random-input-len", args->input_len, "Prompt tokens (random dataset)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--random-output-len", args->output_len, "max_tokens of each request")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--random-range-ratio", args->range_ratio,
                  "Lengths are uniform in [len * ratio, len]")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--request-rate", args->request_rate,
                  "Requests per second, Poisson arrivals (default inf: all at once)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-concurrency", args->max_concurrency,
                  "Requests in flight at most (0: no cap)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->seed, "Seed for prompts and arrivals");
  cmd->add_flag("--ignore-eos,!--no-ignore-eos", args->ignore_eos,
                "Ask for exactly max_tokens tokens (default on)");
  cmd->add_option("--timeout", args->timeout_s, "Seconds one request may take")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--output-json", args->output_json, "Also write the results here as JSON");
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace trident::cli
