#include "cli/e2e_report.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include <fmt/format.h>

namespace trident::cli {

namespace {

using json = nlohmann::json;

template <class F>
double mean_over_ranks(const E2eCase& c, F f) {
  double sum = 0;
  for (const RankFigures& r : c.ranks) sum += f(r);
  return c.ranks.empty() ? 0 : sum / double(c.ranks.size());
}

json stage_map(const double (&seconds)[kStageCount]) {
  json j = json::object();
  for (int s = 0; s < kStageCount; ++s) j[stage_name(Stage(s))] = seconds[s] * 1e3;
  return j;
}

json rank_json(const E2eCase& c, const RankFigures& r) {
  return {{"step_ms", r.step_s * 1e3},
          {"eager_step_ms", r.eager_step_s * 1e3},
          {"tokens_per_s", c.tokens / r.step_s},
          {"normalized_tokens_per_s", c.tokens / r.full_s},
          {"floor_ms", r.floor_s * 1e3},
          {"marked_step_ms", r.marked_step_s * 1e3},
          {"stages_ms", stage_map(r.stage_s)},
          {"stage_floors_ms", stage_map(r.stage_floor_s)},
          {"per_layer_ms",
           {{"dense", r.dense_layer_s * 1e3},
            {"moe", r.moe_layer_s * 1e3},
            {"outside", r.outside_s * 1e3}}},
          {"bytes", r.bytes},
          {"fp8_flops", r.fp8_flops},
          {"bf16_flops", r.bf16_flops},
          {"routed_rows", r.routed_rows}};
}

// The first rank's stage split (ranks step together; their splits differ by their expert load).
double stage_ms(const E2eCase& c, int s) { return c.ranks.at(0).stage_s[s] * 1e3; }
double stage_floor_ms(const E2eCase& c, int s) { return c.ranks.at(0).stage_floor_s[s] * 1e3; }

std::string batch_label(const E2eCase& c) {
  return c.phase == "decode" ? fmt::format("{} req × {} ctx", c.sequences, c.context)
                             : fmt::format("{} × {}-token prompts", c.sequences, c.context);
}

}  // namespace

json e2e_json(const E2eReport& r, const RunInfo& info) {
  const E2eOptions& o = r.options;
  json routings = json::array();
  for (RoutingKind k : o.routings) routings.push_back(routing_kind_name(k));
  json j = {
      {"benchmark", "e2e"},
      {"preset", r.preset},
      {"device", r.device_name},
      {"ranks", r.ranks},
      {"cuda_graphs", r.cuda_graphs},
      {"cuda_graphs_note", r.cuda_graphs_note},
      {"commit", info.commit},
      {"date", info.date},
      {"layers",
       {{"built", r.layers},
        {"dense", r.dense_layers},
        {"moe", r.layers - r.dense_layers},
        {"normalized_to", r.full_layers},
        {"normalized_dense", r.full_dense_layers}}},
      {"memory",
       {{"reserved_bytes", r.memory.reserved},
        {"weight_bytes", r.memory.weights},
        {"step_workspace_bytes", r.memory.step_workspace},
        {"graph_workspace_bytes", r.memory.graph_workspace},
        {"kv_bytes", r.memory.kv},
        {"kv_pages", r.memory.kv_pages}}},
      {"ceilings",
       {{"copy_gbps", r.ceilings.ceilings.copy_bytes_per_s * 1e-9},
        {"fp8_tflops", r.ceilings.ceilings.fp8_flops_per_s * 1e-12},
        {"bf16_tflops", r.ceilings.ceilings.bf16_flops_per_s * 1e-12},
        {"copy", r.ceilings.copy_how},
        {"fp8", r.ceilings.fp8_how},
        {"bf16", r.ceilings.bf16_how}}},
      {"options",
       {{"context", o.context},
        {"decode_batches", o.decode_batches},
        {"prefill_tokens", o.prefill_tokens},
        {"routings", routings},
        {"zipf_s", o.zipf_s},
        {"warmup", o.warmup},
        {"steps", o.steps},
        {"steering_iterations", o.steering_iterations},
        {"steering_tokens", o.steering_tokens},
        {"moe_down", o.moe_down}}},
  };
  json cases = json::array();
  for (const E2eCase& c : r.cases) {
    json ranks = json::array();
    for (const RankFigures& f : c.ranks) ranks.push_back(rank_json(c, f));
    const RankFigures& f0 = c.ranks.at(0);
    cases.push_back({
        {"phase", c.phase},
        {"routing", routing_kind_name(c.routing)},
        {"sequences", c.sequences},
        {"tokens", c.tokens},
        {"context", c.context},
        {"step_ms", mean_over_ranks(c, [](const RankFigures& f) { return f.step_s * 1e3; })},
        {"eager_step_ms",
         mean_over_ranks(c, [](const RankFigures& f) { return f.eager_step_s * 1e3; })},
        {"floor_ms", mean_over_ranks(c, [](const RankFigures& f) { return f.floor_s * 1e3; })},
        {"step_over_floor", E2eReport::step_over_floor(c)},
        {"tokens_per_s_per_gpu", E2eReport::tokens_per_s(c)},
        {"normalized_tokens_per_s_per_gpu", E2eReport::full_tokens_per_s(c)},
        {"normalized_floor_tokens_per_s_per_gpu", E2eReport::full_floor_tokens_per_s(c)},
        {"stages_ms", stage_map(f0.stage_s)},
        {"stage_floors_ms", stage_map(f0.stage_floor_s)},
        {"routing_load",
         {{"choices", f0.load.choices},
          {"experts_touched", f0.load.touched},
          {"max_over_mean", f0.load.max_over_mean},
          {"top_decile_share", f0.load.top_decile_share},
          {"zipf_exponent", f0.load.zipf_exponent},
          {"rank_rows_max_over_mean", f0.rank_rows_max_over_mean}}},
        {"ranks", ranks},
    });
  }
  j["cases"] = cases;
  return j;
}

std::string e2e_markdown(const E2eReport& r, const RunInfo& info) {
  const E2eOptions& o = r.options;
  const auto& ceil = r.ceilings.ceilings;
  std::string md = fmt::format(
      "## End to end, {} dimensions, EP {} on {}, {}, commit {}\n\n", r.preset, r.ranks,
      r.device_name, info.date, info.commit);
  md += fmt::format(
      "`trident bench e2e` (`make bench-e2e EP={}`): {} layers built ({} dense, {} MoE) of "
      "random FP8 weights in the release's layout, made on the device; per GPU, decode steps of B "
      "requests with {}-token contexts and prefill steps of whole {}-token prompts; routing "
      "steered through the router's correction bias to even or Zipf (s = {}) loads ({} "
      "iterations). Step time: median of {} steps after {} warm-up, events on the device's "
      "stream; forward pass plus a greedy token per sequence on the device; decode {}. "
      "Normalized: {} layers ({} dense) from the per-layer times of one eager step timed stage "
      "by stage, rescaled to the median step.\n\n",
      r.ranks, r.layers, r.dense_layers, r.layers - r.dense_layers, o.context, o.context,
      o.zipf_s, o.steering_iterations, o.steps, o.warmup,
      r.cuda_graphs ? "steps replayed as CUDA graphs (eager steps beside them)"
                    : "steps launched op by op" +
                          (r.cuda_graphs_note.empty() ? "" : " (CUDA graphs " + r.cuda_graphs_note + ")"),
      r.full_layers, r.full_dense_layers);
  md += fmt::format(
      "Ceilings measured in this run: copy {:.0f} GB/s ({}); FP8 {:.0f} TFLOPS ({}); BF16 {:.0f} "
      "TFLOPS ({}). Floor = max(bytes / copy, FP8 FLOPs / FP8 rate + BF16 FLOPs / BF16 rate), "
      "bytes = weights read + KV cache read and written (activations left out), attention in "
      "the cheaper of the absorbed and expanded forms; dispatch and combine have no floor "
      "here.\n\n",
      ceil.copy_bytes_per_s * 1e-9, r.ceilings.copy_how, ceil.fp8_flops_per_s * 1e-12,
      r.ceilings.fp8_how, ceil.bf16_flops_per_s * 1e-12, r.ceilings.bf16_how);
  if (r.memory.reserved > 0)
    md += fmt::format(
        "Memory plan: {:.1f} GB reserved = {:.1f} GB weights + {:.1f} GB KV cache ({} pages) + "
        "{:.1f} GB step workspace (trial steps) + {:.1f} GB decode graph workspace + margin.\n\n",
        r.memory.reserved / 1e9, r.memory.weights / 1e9, r.memory.kv / 1e9, r.memory.kv_pages,
        r.memory.step_workspace / 1e9, r.memory.graph_workspace / 1e9);

  md += fmt::format(
      "| phase | routing | batch per GPU | tokens / step | step ms | eager ms | floor ms | step / "
      "floor | tok/s per GPU | {0}-layer tok/s per GPU | {0}-layer floor tok/s |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n",
      r.full_layers);
  for (const E2eCase& c : r.cases) {
    const double step = mean_over_ranks(c, [](const RankFigures& f) { return f.step_s; });
    const double eager = mean_over_ranks(c, [](const RankFigures& f) { return f.eager_step_s; });
    const double floor = mean_over_ranks(c, [](const RankFigures& f) { return f.floor_s; });
    md += fmt::format(
        "| {} | {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.0f} | {:.0f} | {:.0f} |\n",
        c.phase, routing_kind_name(c.routing), batch_label(c), c.tokens, step * 1e3, eager * 1e3,
        floor * 1e3, E2eReport::step_over_floor(c), E2eReport::tokens_per_s(c),
                      E2eReport::full_tokens_per_s(c), E2eReport::full_floor_tokens_per_s(c));
  }
  md += "\nStage split of one step (rank 0), ms, with each stage's own floor in brackets; "
        "experts = the routed experts (on one rank also their routing, permutation and weighted "
        "sum), mlp = dense layers' MLP and the shared expert, rest = norms, residual adds, "
        "embedding, lm_head and sampling:\n\n| phase | routing | batch per GPU |";
  for (int s = 0; s < kStageCount; ++s) md += fmt::format(" {} |", stage_name(Stage(s)));
  md += " expert load max / mean | busiest 10% of experts' share | fitted Zipf s |\n|---|---|---|";
  for (int s = 0; s < kStageCount + 3; ++s) md += "---|";
  md += "\n";
  for (const E2eCase& c : r.cases) {
    md += fmt::format("| {} | {} | {} |", c.phase, routing_kind_name(c.routing), batch_label(c));
    for (int s = 0; s < kStageCount; ++s)
      md += fmt::format(" {:.2f} ({:.2f}) |", stage_ms(c, s), stage_floor_ms(c, s));
    const LoadSummary& l = c.ranks.at(0).load;
    md += fmt::format(" {:.2f} | {:.0f}% | {:.2f} |\n", l.max_over_mean, l.top_decile_share * 100,
                      l.zipf_exponent);
  }
  md += "\nPlot: e2e.svg in the run's output folder.\n";
  return md;
}

namespace {

// A panel of an SVG line chart: x on a log2 axis (batch sizes), y linear from zero.
struct Series {
  std::string name, color;
  bool dashed = false;
  std::vector<std::pair<double, double>> points;
};

std::string panel(double left, double top, double width, double height, const std::string& title,
                  const std::string& x_label, const std::vector<Series>& series) {
  double x_lo = 1e300, x_hi = 0, y_hi = 0;
  for (const Series& s : series)
    for (auto [x, y] : s.points) {
      x_lo = std::min(x_lo, x);
      x_hi = std::max(x_hi, x);
      y_hi = std::max(y_hi, y);
    }
  std::string svg = fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"14\" text-anchor=\"middle\">{}</text>\n",
      left + width / 2, top - 10, title);
  if (x_hi <= 0 || y_hi <= 0) return svg + "\n";
  if (x_hi == x_lo) x_hi = x_lo * 2;
  // Gridlines 1, 2 or 5 times a power of ten apart, five or so of them.
  const double raw = y_hi / 5, power = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * power;
  for (double m : {5.0, 2.0, 1.0})
    if (m * power >= raw) step = m * power;
  const double y_max = std::ceil(y_hi * 1.05 / step) * step;
  auto px = [&](double x) {
    return left + width * (std::log2(x) - std::log2(x_lo)) / (std::log2(x_hi) - std::log2(x_lo));
  };
  auto py = [&](double y) { return top + height * (1 - y / y_max); };
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#444\"/>\n",
      left, top, width, height);
  for (double y = 0; y <= y_max + step / 2; y += step)
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
        "<text x=\"{3:.1f}\" y=\"{4:.1f}\" font-size=\"11\" text-anchor=\"end\">{5}</text>\n",
        left, py(y), left + width, left - 6, py(y) + 4, fmt::format("{:.0f}", y));
  std::vector<double> xs;
  for (const Series& s : series)
    for (auto [x, y] : s.points) xs.push_back(x);
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
  for (double x : xs)
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"middle\">{:.0f}</text>\n",
        px(x), top + height + 16, x);
  svg += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
      left + width / 2, top + height + 36, x_label);
  double legend_y = top + 16;
  for (const Series& s : series) {
    if (s.points.empty()) continue;
    std::string path;
    for (auto [x, y] : s.points) path += fmt::format("{}{:.1f},{:.1f} ", path.empty() ? "M" : "L", px(x), py(y));
    svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{}/>\n", path,
                       s.color, s.dashed ? " stroke-dasharray=\"6,4\"" : "");
    for (auto [x, y] : s.points)
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(x), py(y),
                         s.color);
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"{3}\" "
        "stroke-width=\"2\"{4}/><text x=\"{5:.1f}\" y=\"{6:.1f}\" font-size=\"11\">{7}</text>\n",
        left + 10, legend_y, left + 34, s.color, s.dashed ? " stroke-dasharray=\"6,4\"" : "",
        left + 40, legend_y + 4, s.name);
    legend_y += 16;
  }
  return svg;
}

}  // namespace

std::string e2e_svg(const E2eReport& r) {
  const std::map<RoutingKind, std::string> colors = {{RoutingKind::Uniform, "#1f77b4"},
                                                     {RoutingKind::Zipf, "#d62728"}};
  auto series_of = [&](const std::string& phase, bool by_tokens) {
    std::vector<Series> out;
    for (RoutingKind k : r.options.routings) {
      Series measured{fmt::format("{}, measured", routing_kind_name(k)), colors.at(k), false, {}};
      Series floor{fmt::format("{}, roofline floor", routing_kind_name(k)), colors.at(k), true, {}};
      for (const E2eCase& c : r.cases) {
        if (c.phase != phase || c.routing != k) continue;
        const double x = by_tokens ? c.tokens : c.sequences;
        measured.points.push_back({x, E2eReport::full_tokens_per_s(c)});
        floor.points.push_back({x, E2eReport::full_floor_tokens_per_s(c)});
      }
      out.push_back(measured);
      out.push_back(floor);
    }
    return out;
  };
  const double W = 1000, H = 420;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"sans-serif\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2:.0f}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{3}: tokens/s per GPU "
      "(normalized to {4} layers), EP {5}, {6}</text>\n"
      "<text x=\"18\" y=\"{7:.0f}\" font-size=\"12\" text-anchor=\"middle\" "
      "transform=\"rotate(-90 18 {7:.0f})\">tokens/s per GPU</text>\n",
      W, H, W / 2, r.preset, r.full_layers, r.ranks, r.device_name, H / 2);
  svg += panel(80, 60, 380, 290, "decode", "requests per GPU", series_of("decode", false));
  svg += panel(580, 60, 380, 290, "prefill", "prompt tokens per step per GPU",
               series_of("prefill", true));
  svg += "</svg>\n";
  return svg;
}

}  // namespace trident::cli
