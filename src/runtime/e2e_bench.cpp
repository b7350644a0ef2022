#include "runtime/e2e_bench.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>

#include <spdlog/spdlog.h>

#include "backend/stage_timer.h"
#include "cache/kv_page_pool.h"
#include "core/error.h"
#include "model/deepseek_v3.h"
#include "model/presets.h"
#include "model/random_weights.h"
#include "runtime/decode_graphs.h"
#include "runtime/engine.h"
#include "runtime/step_builder.h"
#ifdef TRIDENT_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device_context.h"
#endif

namespace trident {

namespace {

constexpr int kPage = AttentionMeta::kPageSize;
// Decode positions used by steering, at most (each steering iteration steps the decode batch at
// this many positions past the context, for more choices to count).
constexpr int kMaxSteeringDecodeSteps = 8;

using Loads = std::vector<std::vector<int64_t>>;  // [layer][expert] choices

struct Sequence {
  std::vector<int32_t> tokens, pages;
};

// Counts the experts each token chooses, per layer, on its way to the experts (which run as
// without it). It reads the choices back to the host: used only in untimed steps.
class LoadCounter final : public RoutedExpertsHook {
 public:
  LoadCounter(Backend& backend, RoutedExpertsHook* inner, int layers, int experts)
      : backend_(backend), inner_(inner), loads_(layers, std::vector<int64_t>(experts, 0)) {}

  void moe_experts(int layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                   const ExpertWeights& experts, Tensor& out) override {
    if (topk_ids.defined() && topk_ids.numel() > 0) {
      std::vector<int32_t> ids(topk_ids.numel());
      backend_.to_host(topk_ids, ids.data());
      for (int32_t e : ids) loads_.at(layer).at(e)++;
    }
    if (inner_)
      inner_->moe_experts(layer, x, topk_ids, topk_weights, experts, out);
    else
      backend_.moe_experts(x, topk_ids, topk_weights, experts, out);
  }

  const Loads& loads() const { return loads_; }

 private:
  Backend& backend_;
  RoutedExpertsHook* inner_;
  Loads loads_;
};

double median(std::vector<double> v) {
  TRI_CHECK(!v.empty(), "median of nothing");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

class Bench {
 public:
  explicit Bench(const E2eOptions& o)
      : o_(o), preset_(preset_config(o.preset)), rank_(o.ranks ? o.ranks->rank() : 0),
        n_ranks_(o.ranks ? o.ranks->size() : 1) {
    TRI_CHECK(preset_.n_routed_experts > 0 && preset_.first_k_dense_replace >= 1 &&
                  preset_.moe_layer_freq == 1,
              "bench e2e builds dense layers then MoE layers; preset {} is not laid out so",
              o.preset);
    TRI_CHECK(o.context >= 1, "--context must be positive, got {}", o.context);
    TRI_CHECK(o.steps >= 1 && o.warmup >= 0, "--steps must be >= 1 and --warmup >= 0");
    TRI_CHECK(o.layers == 0 || o.layers >= 2,
              "--layers {}: the benchmark needs a dense and an MoE layer at least (2)", o.layers);
    const int decode_positions = o.context + std::max(kMaxSteeringDecodeSteps, case_steps());
    TRI_CHECK(decode_positions <= preset_.max_position_embeddings,
              "--context {} plus {} decode steps exceeds the model's {} positions", o.context,
              decode_positions - o.context, preset_.max_position_embeddings);
  }

  E2eReport run();

 private:
  // Steps per case: one counting the routing, the warm-up, the timed ones, one stage by stage.
  int case_steps() const { return 1 + o_.warmup + o_.steps + 1; }
  int max_decode_batch() const {
    return o_.decode_batches.empty()
               ? 0
               : *std::max_element(o_.decode_batches.begin(), o_.decode_batches.end());
  }
  int prompts_for(int budget) const { return std::max(1, budget / o_.context); }
  int max_prompts() const {
    int n = prompts_for(o_.steering_tokens);
    for (int b : o_.prefill_tokens) n = std::max(n, prompts_for(b));
    return n;
  }
  // The longest decode context: the context plus the steps steering or a case takes.
  int decode_length() const {
    return o_.context + std::max(kMaxSteeringDecodeSteps, case_steps());
  }
  int decode_pages_per_seq() const { return pages_for_tokens(decode_length(), kPage); }
  // Pages the sequences take; the cache has one more with graphs, their padding rows' scratch.
  int kv_pages() const {
    return max_decode_batch() * decode_pages_per_seq() +
           max_prompts() * pages_for_tokens(o_.context, kPage);
  }
  int cache_pages() const { return kv_pages() + (graphs_ ? 1 : 0); }

  void build_model();
  void check_host_memory(int n_dense, int n_moe);
  std::unique_ptr<DeepseekV3> trial_model(const LayerWeights& dense, const LayerWeights& moe);
  int64_t graph_workspace(DeepseekV3& trial);
  int64_t trial_workspace(DeepseekV3& trial);
  std::pair<int, int> layers_that_fit(int64_t dense_bytes, int64_t moe_bytes, int64_t workspace);
  std::vector<Sequence> make_sequences(int n, int length, std::vector<int32_t> pages_from);
  // Host inputs of a step: the first n decode sequences' token at `position`, or the first n
  // prompts whole.
  StepInput decode_step(const std::vector<Sequence>& seqs, int n, int position);
  StepInput prefill_step(const std::vector<Sequence>& seqs, int n);
  void step(DeepseekV3& model, KvCache& cache, const StepInput& in, StageTimer* timer = nullptr);
  std::unique_ptr<DeepseekV3> make_model(const std::vector<std::vector<float>>& biases);
  Loads count_loads(DeepseekV3& model, const StepInput& in);
  std::vector<std::vector<float>> steer(RoutingKind kind, const std::vector<StepInput>& batch);
  RankFigures run_case(DeepseekV3& model, const std::vector<StepInput>& host_inputs,
                       const std::vector<SequenceShape>& shapes);
  double median_step(int first, const std::function<void(int)>& run);
  void time_decode_graphs(const std::vector<Sequence>& seqs);
  void run_decode(RoutingKind kind, const std::vector<Sequence>& seqs);
  void run_prefill(RoutingKind kind, const std::vector<Sequence>& prompts);
  void sample(const Tensor& logits);
  void gather(E2eCase& c, const RankFigures& mine);

  E2eOptions o_;
  ModelConfig preset_, config_;
  int rank_, n_ranks_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<ExpertParallel> ep_;
  std::unique_ptr<RandomWeights> random_;
  std::unique_ptr<StageTimer> timer_;
  bool graphs_ = false;
  std::map<RoutingKind, std::vector<std::vector<float>>> decode_biases_;
  ModelWeights weights_;
  KvCache cache_;
  std::unique_ptr<KvPagePool> pool_;
  std::mt19937_64 rng_;
  std::vector<int32_t> sampled_;  // the last step's tokens, where sampled on the host
  E2eReport report_;
};

std::vector<Sequence> Bench::make_sequences(int n, int length, std::vector<int32_t> pages_from) {
  // Token ids from the upper part of the vocabulary, away from the special tokens at its start.
  std::uniform_int_distribution<int32_t> id(std::min(preset_.vocab_size - 1, 16),
                                            preset_.vocab_size - 1);
  std::vector<Sequence> seqs(n);
  const int pages = pages_for_tokens(length, kPage);
  for (int s = 0; s < n; ++s) {
    seqs[s].tokens.resize(length);
    for (int32_t& t : seqs[s].tokens) t = id(rng_);
    if (pages_from.empty()) {
      TRI_CHECK(pool_->allocate(pages, seqs[s].pages), "KV pool: {} pages wanted, {} free", pages,
                pool_->free_pages());
    } else {
      seqs[s].pages.assign(pages_from.begin() + s * pages, pages_from.begin() + (s + 1) * pages);
    }
  }
  return seqs;
}

StepInput Bench::decode_step(const std::vector<Sequence>& seqs, int n, int position) {
  std::vector<StepChunk> chunks;
  for (int s = 0; s < n; ++s)
    chunks.push_back({&seqs[s].tokens, position, 1, &seqs[s].pages, true});
  return build_step(chunks);
}

StepInput Bench::prefill_step(const std::vector<Sequence>& seqs, int n) {
  std::vector<StepChunk> chunks;
  for (int s = 0; s < n; ++s)
    chunks.push_back({&seqs[s].tokens, 0, o_.context, &seqs[s].pages, true});
  return build_step(chunks);
}

// One step as a server runs it: ranks agree to step, the forward pass, a greedy token per
// sequence, left on the device.
void Bench::step(DeepseekV3& model, KvCache& cache, const StepInput& in, StageTimer* timer) {
  if (timer) timer->mark(Stage::Rest, -1);
  if (ep_) ep_->begin_step(in.meta.n_tokens, true);
  sample(model.forward(in, cache));
}

void Bench::sample(const Tensor& logits) {
#ifdef TRIDENT_CUDA
  if (backend_->device() == Device::CUDA) {
    std::vector<cuda::SampleRow> rows(size_t(logits.dim(0)));
    Tensor ids = backend_->alloc(DType::I32, {logits.dim(0)});
    static_cast<cuda::CudaBackend&>(*backend_).sample(logits, rows, ids);
    return;
  }
#endif
  std::vector<float> host(logits.numel());
  backend_->to_host(logits, host.data());
  const int64_t vocab = logits.dim(1);
  sampled_.resize(size_t(logits.dim(0)));
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    const float* row = host.data() + r * vocab;
    sampled_[size_t(r)] = int32_t(std::max_element(row, row + vocab) - row);
  }
}

// A two-layer model (one dense, one MoE layer) for trial steps: a step's workspace is that of its
// largest layer, so two layers show what any number needs.
std::unique_ptr<DeepseekV3> Bench::trial_model(const LayerWeights& dense, const LayerWeights& moe) {
  ModelConfig c = preset_;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  ModelWeights w = weights_;
  w.layers = {dense, moe};
  auto model = std::make_unique<DeepseekV3>(c, std::move(w), *backend_);
  model->set_routed_experts_hook(ep_.get());
  return model;
}

// The decode graphs' workspace: the runtime's measure of one graph's step, plus the logits every
// bucket's graph keeps (each holds its own, for the vocabulary at its batch).
int64_t Bench::graph_workspace(DeepseekV3& trial) {
  int64_t bytes = measure_decode_graph_workspace(trial, max_decode_batch(), decode_length());
  for (int b : decode_graph_buckets(max_decode_batch()))
    bytes += int64_t(b) * preset_.vocab_size * int64_t(sizeof(float));
  return bytes;
}

// The workspace a step needs, from trial steps at the largest batches of the run.
int64_t Bench::trial_workspace(DeepseekV3& model) {
  const ModelConfig& c = model.config();
  const int decode_pages = max_decode_batch() * decode_pages_per_seq();
  const int prefill_pages = max_prompts() * pages_for_tokens(o_.context, kPage);
  KvCache cache = make_kv_cache(*backend_, c, std::max(decode_pages, prefill_pages));
  std::vector<int32_t> page_ids(std::max(decode_pages, prefill_pages));
  std::iota(page_ids.begin(), page_ids.end(), 0);
  const int64_t before = backend_->device_memory()->in_use;
  backend_->reset_memory_peak();
  if (max_decode_batch() > 0) {
    std::vector<Sequence> seqs = make_sequences(
        max_decode_batch(), decode_length(), {page_ids.begin(), page_ids.begin() + decode_pages});
    step(model, cache, upload_step(*backend_, decode_step(seqs, int(seqs.size()), o_.context)));
  }
  std::vector<Sequence> prompts =
      make_sequences(max_prompts(), o_.context, {page_ids.begin(), page_ids.begin() + prefill_pages});
  step(model, cache, upload_step(*backend_, prefill_step(prompts, int(prompts.size()))));
  backend_->synchronize();
  return backend_->device_memory()->peak_in_use - before;
}

// Without a memory plan the weights and cache come from host memory: refuse, before making
// them, a model that would not fit in what the host has available.
void Bench::check_host_memory(int n_dense, int n_moe) {
  const DType act = backend_->activation_dtype();
  int held = preset_.n_routed_experts;
  if (ep_) held = int(ep_->placement(preset_.first_k_dense_replace).experts_of(rank_).size());
  const int64_t dense = RandomWeights::layer_bytes(preset_, false, 0, act);
  const int64_t moe = RandomWeights::layer_bytes(preset_, true, held, act);
  const int64_t kv_layer =
      int64_t(cache_pages()) * kPage * preset_.kv_cache_dim() * int64_t(dtype_size(act));
  const int64_t need = RandomWeights::globals_bytes(preset_) + n_dense * (dense + kv_layer) +
                       n_moe * (moe + kv_layer);
  int64_t available = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    int64_t kb = 0;
    meminfo >> kb;
    if (key == "MemAvailable:") available = kb * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  TRI_CHECK(available == 0 || need <= available * 4 / 5,
            "{} layers of {} ({} dense, {} MoE) with their KV cache take {:.1f} GB of host memory "
            "and {:.1f} GB are available (a dense layer {:.2f} GB, an MoE layer {:.2f} GB); "
            "pass fewer --layers, or run on a GPU",
            n_dense + n_moe, o_.preset, n_dense, n_moe, need / 1e9, available / 1e9,
            (dense + kv_layer) / 1e9, (moe + kv_layer) / 1e9);
}

// Dense and MoE layers that fit in the memory plan beside the KV cache, the workspace and a
// margin of 5% of the reservation (as the engine's plan keeps), one of each being built already.
std::pair<int, int> Bench::layers_that_fit(int64_t dense_bytes, int64_t moe_bytes,
                                           int64_t workspace) {
  const DeviceMemory mem = *backend_->device_memory();
  const int64_t kv_layer = int64_t(cache_pages()) * kPage * preset_.kv_cache_dim() *
                           int64_t(dtype_size(backend_->activation_dtype()));
  int64_t left = mem.reserved - mem.in_use - workspace - mem.reserved / 20 - 2 * kv_layer;
  const int first_dense = preset_.first_k_dense_replace;
  TRI_CHECK(left >= 0,
            "GPU memory plan: {:.2f} GB reserved, {:.2f} GB in use, {:.2f} GB of step workspace: "
            "no room for the KV cache of two layers ({:.2f} GB); lower --decode-batches, "
            "--prefill-tokens or --context, or raise --gpu-memory-fraction",
            mem.reserved / 1e9, mem.in_use / 1e9, workspace / 1e9, 2 * kv_layer / 1e9);
  if (o_.layers > 0) {
    const int dense = std::min(first_dense, o_.layers - 1), moe = o_.layers - dense;
    const int64_t need = (dense - 1) * (dense_bytes + kv_layer) + (moe - 1) * (moe_bytes + kv_layer);
    int fit = 2;
    for (int64_t room = left; fit < preset_.num_hidden_layers; ++fit) {
      room -= (fit < first_dense ? dense_bytes : moe_bytes) + kv_layer;
      if (room < 0) break;
    }
    TRI_CHECK(need <= left,
              "--layers {} needs {:.1f} GB more than the memory plan leaves ({:.1f} GB after the "
              "KV cache and a step's workspace): at most {} layers fit; lower --layers or leave it "
              "out",
              o_.layers, (need - left) / 1e9, left / 1e9, fit);
    return {dense, moe};
  }
  int dense = 1, moe = 1;
  while (dense < first_dense && left >= dense_bytes + kv_layer) {
    ++dense;
    left -= dense_bytes + kv_layer;
  }
  while (dense + moe < preset_.num_hidden_layers && left >= moe_bytes + kv_layer) {
    ++moe;
    left -= moe_bytes + kv_layer;
  }
  return {dense, moe};
}

void Bench::build_model() {
  // Every MoE layer has the same placement (contiguous_placements), so any MoE layer's index says
  // which experts this rank holds.
  auto holds = [this](int e) { return !ep_ || ep_->holds_expert(preset_.first_k_dense_replace, e); };
  const int first_moe = preset_.first_k_dense_replace;
  std::vector<LayerWeights> dense, moe;
  int n_dense = 0, n_moe = 0;
  const bool planned = backend_->device_memory().has_value();
  if (!planned) {
    const int layers = o_.layers > 0 ? o_.layers : preset_.num_hidden_layers;
    n_dense = std::min(preset_.first_k_dense_replace, layers - 1);
    n_moe = layers - n_dense;
    check_host_memory(n_dense, n_moe);
  }
  weights_ = random_->globals();
  if (planned) {
    int64_t at = backend_->device_memory()->in_use;
    dense.push_back(random_->layer(0));
    const int64_t dense_bytes = backend_->device_memory()->in_use - at;
    at = backend_->device_memory()->in_use;
    moe.push_back(random_->layer(first_moe, holds));
    const int64_t moe_bytes = backend_->device_memory()->in_use - at;
    std::unique_ptr<DeepseekV3> trial = trial_model(dense[0], moe[0]);
    if (graphs_) {
      // Set aside before the layers are counted, as the engine does: it comes out of the plan.
      report_.memory.graph_workspace = graph_workspace(*trial);
      backend_->reserve_graph_workspace(report_.memory.graph_workspace);
    }
    const int64_t workspace = trial_workspace(*trial);
    trial.reset();
    std::tie(n_dense, n_moe) = layers_that_fit(dense_bytes, moe_bytes, workspace);
    report_.memory.step_workspace = workspace;
    if (o_.ranks) {  // every rank builds the same layers: the fewest any can hold
      const int mine[2] = {n_dense, n_moe};
      std::vector<int> all(2 * size_t(n_ranks_));
      o_.ranks->all_gather(mine, sizeof(mine), all.data(), "bench e2e layer count");
      for (int r = 0; r < n_ranks_; ++r) {
        n_dense = std::min(n_dense, all[2 * r]);
        n_moe = std::min(n_moe, all[2 * r + 1]);
      }
    }
  }
  while (int(dense.size()) < n_dense) dense.push_back(random_->layer(int(dense.size())));
  while (int(moe.size()) < n_moe) moe.push_back(random_->layer(first_moe + int(moe.size()), holds));
  config_ = preset_;
  config_.num_hidden_layers = n_dense + n_moe;
  config_.first_k_dense_replace = n_dense;
  weights_.layers = dense;
  weights_.layers.insert(weights_.layers.end(), moe.begin(), moe.end());

  cache_ = make_kv_cache(*backend_, config_, cache_pages());
  for (KvLayer& l : cache_.layers) random_->fill(l.pages, 1.0f);
  pool_ = std::make_unique<KvPagePool>(kv_pages());
  if (ep_) ep_->wait_for_ranks_loaded();
  if (planned) {
    const DeviceMemory mem = *backend_->device_memory();
    report_.memory.reserved = mem.reserved;
    report_.memory.kv = int64_t(cache_.layers.size()) * int64_t(cache_.layers[0].pages.nbytes());
    report_.memory.weights = mem.in_use - report_.memory.kv - report_.memory.graph_workspace;
  }
  report_.memory.kv_pages = kv_pages();
  report_.layers = config_.num_hidden_layers;
  report_.dense_layers = n_dense;
  spdlog::info("bench e2e: {} layers ({} dense, {} MoE) of {}, {} KV pages{}", report_.layers,
               n_dense, n_moe, o_.preset, kv_pages(),
               planned ? fmt::format(", {:.1f} GB of weights, {:.1f} GB of KV cache, {:.1f} GB "
                                     "step workspace, of {:.1f} GB reserved",
                                     report_.memory.weights / 1e9, report_.memory.kv / 1e9,
                                     report_.memory.step_workspace / 1e9,
                                     report_.memory.reserved / 1e9)
                       : std::string());
}

std::unique_ptr<DeepseekV3> Bench::make_model(const std::vector<std::vector<float>>& biases) {
  ModelWeights w = weights_;
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    if (!w.layers[l].is_moe || !w.layers[l].moe.router_bias.defined()) continue;
    Tensor host = cpu_tensor(DType::F32, {config_.n_routed_experts});
    std::copy(biases[l].begin(), biases[l].end(), host.ptr<float>());
    w.layers[l].moe.router_bias = backend_->upload(host);
  }
  auto model = std::make_unique<DeepseekV3>(config_, std::move(w), *backend_);
  model->set_routed_experts_hook(ep_.get());
  return model;
}

// The choices of every rank's tokens in one step, per layer.
Loads Bench::count_loads(DeepseekV3& model, const StepInput& in) {
  LoadCounter counter(*backend_, ep_.get(), config_.num_hidden_layers, config_.n_routed_experts);
  model.set_routed_experts_hook(&counter);
  step(model, cache_, in);
  model.set_routed_experts_hook(ep_.get());
  Loads loads = counter.loads();
  if (!o_.ranks) return loads;
  const size_t E = size_t(config_.n_routed_experts), L = loads.size();
  std::vector<int64_t> mine, all(L * E * size_t(n_ranks_));
  for (const auto& layer : loads) mine.insert(mine.end(), layer.begin(), layer.end());
  o_.ranks->all_gather(mine.data(), mine.size() * sizeof(int64_t), all.data(),
                       "bench e2e expert loads");
  for (size_t l = 0; l < L; ++l)
    for (size_t e = 0; e < E; ++e) {
      loads[l][e] = 0;
      for (int r = 0; r < n_ranks_; ++r) loads[l][e] += all[size_t(r) * L * E + l * E + e];
    }
  return loads;
}

// Biases per layer that bring the batch's loads near the target (routing_target.h).
std::vector<std::vector<float>> Bench::steer(RoutingKind kind,
                                             const std::vector<StepInput>& batch) {
  const int E = config_.n_routed_experts;
  std::vector<std::vector<float>> biases(config_.num_hidden_layers, std::vector<float>(E, 0.0f));
  std::vector<std::vector<double>> shares(config_.num_hidden_layers);
  for (int l = 0; l < config_.num_hidden_layers; ++l)
    shares[l] = target_shares(kind, E, config_.num_experts_per_tok, o_.zipf_s, o_.seed + 7919 * l);
  for (int it = 0; it < o_.steering_iterations; ++it) {
    std::unique_ptr<DeepseekV3> model = make_model(biases);
    Loads total(config_.num_hidden_layers, std::vector<int64_t>(E, 0));
    for (const StepInput& in : batch) {
      const Loads loads = count_loads(*model, in);
      for (int l = 0; l < config_.num_hidden_layers; ++l)
        for (int e = 0; e < E; ++e) total[l][e] += loads[l][e];
    }
    for (int l = 0; l < config_.num_hidden_layers; ++l)
      if (config_.is_moe_layer(l)) steer_bias(biases[l], total[l], shares[l], steering_step(it));
  }
  return biases;
}

// The median device time of steps first, first + 1, ... (o_.steps of them), each timed from its
// start to the next one's.
double Bench::median_step(int first, const std::function<void(int)>& run) {
  for (int i = 0; i < o_.steps; ++i) {
    timer_->mark(Stage::Rest, -1);
    run(first + i);
  }
  std::vector<double> steps;
  for (const StageTimer::Interval& i : timer_->finish()) steps.push_back(i.seconds);
  return median(steps);
}

// A case's steps (host_inputs: one per step, or one for all): one counting the routing, the
// warm-up, the timed steps, and one timed stage by stage. Inputs go to the device before the
// timing.
RankFigures Bench::run_case(DeepseekV3& model, const std::vector<StepInput>& host_inputs,
                            const std::vector<SequenceShape>& shapes) {
  std::vector<StepInput> inputs;
  for (const StepInput& h : host_inputs) inputs.push_back(upload_step(*backend_, h));
  auto at = [](const std::vector<StepInput>& v, int i) -> const StepInput& {
    return v[std::min<size_t>(size_t(i), v.size() - 1)];
  };
  const int first_timed = 1 + o_.warmup;
  RankFigures f;
  const Loads loads = count_loads(model, at(inputs, 0));
  for (int i = 0; i < o_.warmup; ++i) step(model, cache_, at(inputs, 1 + i));
  f.eager_step_s = median_step(first_timed, [&](int i) { step(model, cache_, at(inputs, i)); });
  f.step_s = f.eager_step_s;

  model.set_stage_timer(timer_.get());
  if (ep_) ep_->set_stage_timer(timer_.get());
  step(model, cache_, at(inputs, first_timed + o_.steps), timer_.get());
  model.set_stage_timer(nullptr);
  if (ep_) ep_->set_stage_timer(nullptr);
  const int L = config_.num_hidden_layers;
  std::vector<double> per_layer(L, 0.0);
  for (const StageTimer::Interval& i : timer_->finish()) {
    f.stage_s[int(i.stage)] += i.seconds;
    f.marked_step_s += i.seconds;
    if (i.layer >= 0)
      per_layer[i.layer] += i.seconds;
    else
      f.outside_s += i.seconds;
  }
  const int n_dense = config_.first_k_dense_replace, n_moe = L - n_dense;
  for (int l = 0; l < L; ++l) {
    if (l < n_dense)
      f.dense_layer_s += per_layer[l] / n_dense;
    else
      f.moe_layer_s += per_layer[l] / n_moe;
  }
  const int full_dense = preset_.first_k_dense_replace;
  const int full_moe = preset_.num_hidden_layers - full_dense;
  f.full_marked_s = f.outside_s + full_dense * f.dense_layer_s + full_moe * f.moe_layer_s;
  f.full_s = f.full_marked_s * f.step_s / f.marked_step_s;

  // Routing: what this batch chose (all ranks' tokens), and what this rank computes of it.
  std::vector<int64_t> rows(L, 0);
  std::vector<int> touched(L, 0);
  LoadSummary mean;
  double rank_imbalance = 0;
  for (int l = n_dense; l < L; ++l) {
    const ExpertPlacement& placement = ep_ ? ep_->placement(l)
                                           : ExpertPlacement::contiguous(config_.n_routed_experts, 1);
    std::vector<double> rank_rows(n_ranks_, 0.0);
    for (int r = 0; r < n_ranks_; ++r)
      for (int e : placement.experts_of(r)) {
        rank_rows[r] += double(loads[l][e]);
        if (r == rank_) {
          rows[l] += loads[l][e];
          touched[l] += loads[l][e] > 0;
        }
      }
    const double rows_mean = std::accumulate(rank_rows.begin(), rank_rows.end(), 0.0) / n_ranks_;
    rank_imbalance += rows_mean > 0 ? *std::max_element(rank_rows.begin(), rank_rows.end()) / rows_mean : 1.0;
    const LoadSummary s = summarize_load(loads[l]);
    mean.choices += s.choices;
    mean.touched += s.touched;
    mean.max_over_mean += s.max_over_mean;
    mean.top_decile_share += s.top_decile_share;
    mean.zipf_exponent += s.zipf_exponent;
    f.routed_rows += double(rows[l]);
  }
  f.load = {mean.choices / n_moe, mean.touched / n_moe, mean.max_over_mean / n_moe,
            mean.top_decile_share / n_moe, mean.zipf_exponent / n_moe};
  f.rank_rows_max_over_mean = rank_imbalance / n_moe;

  // The floor of this run's layers, and of the preset's whole model from a dense and an MoE layer.
  const DeviceCeilings& ceil = report_.ceilings.ceilings;
  int logit_rows = 0;
  for (const SequenceShape& s : shapes) logit_rows += s.new_tokens > 0;
  const StepWork work = step_work(config_, shapes, logit_rows, rows, touched, ceil);
  StageWork all = work.outside;
  for (const StageWork& layer : work.layers)
    for (int s = 0; s < kStageCount; ++s) all[s] += layer[s];
  for (int s = 0; s < kStageCount; ++s) f.stage_floor_s[s] = all[s].floor_seconds(ceil);
  const Work sum = total(all);
  f.floor_s = sum.floor_seconds(ceil);
  f.bytes = sum.bytes;
  f.fp8_flops = sum.fp8_flops;
  f.bf16_flops = sum.bf16_flops;
  Work dense_layers, moe_layers;
  for (int l = 0; l < L; ++l) {
    if (l < n_dense)
      dense_layers += total(work.layers[l]);
    else
      moe_layers += total(work.layers[l]);
  }
  Work full = total(work.outside);
  full += dense_layers.scaled(double(full_dense) / n_dense);
  full += moe_layers.scaled(double(full_moe) / n_moe);
  f.full_floor_s = full.floor_seconds(ceil);
  return f;
}

void Bench::gather(E2eCase& c, const RankFigures& mine) {
  if (!o_.ranks) {
    c.ranks = {mine};
    return;
  }
  std::vector<RankFigures> all(n_ranks_);
  o_.ranks->all_gather(&mine, sizeof(mine), all.data(), "bench e2e figures");
  c.ranks = rank_ == 0 ? all : std::vector<RankFigures>{mine};
}

// The decode cases of one routing: the bias steered on the largest batch (a few positions for
// enough choices to count), then every batch size, the first n of the same requests.
void Bench::run_decode(RoutingKind kind, const std::vector<Sequence>& seqs) {
  const int B = max_decode_batch();
  const int positions = std::clamp((o_.steering_tokens + B - 1) / B, 1, kMaxSteeringDecodeSteps);
  std::vector<StepInput> steering;
  for (int p = 0; p < positions; ++p)
    steering.push_back(upload_step(*backend_, decode_step(seqs, B, o_.context + p)));
  decode_biases_[kind] = steer(kind, steering);
  std::unique_ptr<DeepseekV3> model = make_model(decode_biases_[kind]);
  for (int b : o_.decode_batches) {
    std::vector<StepInput> inputs;
    for (int i = 0; i < case_steps(); ++i) inputs.push_back(decode_step(seqs, b, o_.context + i));
    const std::vector<SequenceShape> shapes(b, SequenceShape{1, o_.context + 1});
    E2eCase c{"decode", kind, b, b, o_.context, {}};
    gather(c, run_case(*model, inputs, shapes));
    spdlog::info("decode, {} routing, {} requests of {} tokens: {:.2f} ms a step",
                 routing_kind_name(kind), b, o_.context, c.ranks[0].step_s * 1e3);
    report_.cases.push_back(std::move(c));
  }
}

// The prefill cases of one routing: the bias steered on whole prompts, then every step size.
void Bench::run_prefill(RoutingKind kind, const std::vector<Sequence>& prompts) {
  const StepInput steering =
      upload_step(*backend_, prefill_step(prompts, prompts_for(o_.steering_tokens)));
  std::unique_ptr<DeepseekV3> model = make_model(steer(kind, {steering}));
  for (int budget : o_.prefill_tokens) {
    const int n = prompts_for(budget);
    const std::vector<SequenceShape> shapes(n, SequenceShape{o_.context, o_.context});
    E2eCase c{"prefill", kind, n, n * o_.context, o_.context, {}};
    gather(c, run_case(*model, {prefill_step(prompts, n)}, shapes));
    spdlog::info("prefill, {} routing, {} prompts of {} tokens: {:.2f} ms a step",
                 routing_kind_name(kind), n, o_.context, c.ranks[0].step_s * 1e3);
    report_.cases.push_back(std::move(c));
  }
}

// The decode cases again as graph replays (one rank), after everything else has its figures: a
// graph per bucket up to the largest batch for each routing's model, the same steps timed, and
// the case's step time taken from them. A capture or replay that fails leaves the eager figures,
// saying why, rather than ending the run.
void Bench::time_decode_graphs(const std::vector<Sequence>& seqs) {
  const int first_timed = 1 + o_.warmup;
  try {
    for (const auto& [kind, biases] : decode_biases_) {
      std::unique_ptr<DeepseekV3> model = make_model(biases);
      DecodeGraphs graphs(*model, cache_,
                          DecodeGraphOptions{max_decode_batch(), decode_length(), kv_pages()});
      for (E2eCase& c : report_.cases) {
        if (c.phase != "decode" || c.routing != kind) continue;
        std::vector<StepInput> inputs;
        for (int i = 0; i < first_timed + o_.steps; ++i)
          inputs.push_back(decode_step(seqs, c.sequences, o_.context + i));
        auto replay = [&](int i) {
          Tensor logits = graphs.run(inputs[size_t(i)]);
          TRI_CHECK(logits.defined(), "a decode step of the benchmark found no graph to replay");
          sample(logits);
        };
        for (int i = 1; i < first_timed; ++i) replay(i);
        RankFigures& f = c.ranks.at(0);
        f.step_s = median_step(first_timed, replay);
        f.full_s = f.full_marked_s * f.step_s / f.marked_step_s;
        spdlog::info("decode, {} routing, {} requests: {:.2f} ms a step as a graph, {:.2f} eager",
                     routing_kind_name(kind), c.sequences, f.step_s * 1e3, f.eager_step_s * 1e3);
      }
    }
  } catch (const std::exception& e) {
    spdlog::warn("decode graphs failed, the decode figures are eager steps': {}", e.what());
    for (E2eCase& c : report_.cases) {
      if (c.phase != "decode") continue;
      RankFigures& f = c.ranks.at(0);
      f.step_s = f.eager_step_s;
      f.full_s = f.full_marked_s * f.step_s / f.marked_step_s;
    }
    report_.cuda_graphs = false;
    report_.cuda_graphs_note = std::string("failed: ") + e.what();
  }
}

E2eReport Bench::run() {
  backend_ = make_backend(o_.device, o_.device_index, o_.device == "cpu" ? 0 : o_.gpu_memory_fraction);
  report_.device_name = "CPU";
#ifdef TRIDENT_CUDA
  if (backend_->device() == Device::CUDA)
    report_.device_name = static_cast<cuda::CudaBackend&>(*backend_).context().name();
#endif
  if (!o_.moe_down.empty()) {
#ifdef TRIDENT_CUDA
    if (backend_->device() == Device::CUDA)
      static_cast<cuda::CudaBackend&>(*backend_).set_moe_override(cuda::MoeChoice{"", o_.moe_down});
#endif
    TRI_CHECK(backend_->device() == Device::CUDA,
              "--moe-down {} names a CUDA kernel; this run is on the CPU", o_.moe_down);
  }
  rng_.seed(o_.seed * 1000003 + uint64_t(rank_));
  random_ = std::make_unique<RandomWeights>(*backend_, preset_, o_.seed);
  timer_ = make_stage_timer(*backend_);
  report_.preset = o_.preset;
  report_.ranks = n_ranks_;
  report_.full_layers = preset_.num_hidden_layers;
  report_.full_dense_layers = preset_.first_k_dense_replace;
  report_.options = o_;
  report_.options.ranks = nullptr;
  report_.ceilings = measure_ceilings(*backend_, *random_);
  if (o_.ranks)
    ep_ = std::make_unique<ExpertParallel>(*o_.ranks, *backend_, preset_,
                                           contiguous_placements(preset_, n_ranks_, 0),
                                           o_.expert_parallel);
  graphs_ = o_.cuda_graphs && backend_->supports_graphs() && !ep_;
  report_.cuda_graphs = graphs_;
  if (o_.cuda_graphs && !graphs_)
    report_.cuda_graphs_note = ep_ ? "off: expert-parallel steps exchange tokens through the host"
                                   : "off: this backend has no graphs";
  build_model();

  const std::vector<Sequence> decode_seqs = make_sequences(max_decode_batch(), decode_length(), {});
  const std::vector<Sequence> prompts = make_sequences(max_prompts(), o_.context, {});
  for (RoutingKind kind : o_.routings) {
    if (!o_.decode_batches.empty()) run_decode(kind, decode_seqs);
    if (!o_.prefill_tokens.empty()) run_prefill(kind, prompts);
  }
  if (graphs_ && !o_.decode_batches.empty()) time_decode_graphs(decode_seqs);
  if (ep_) ep_->finish();
  return report_;
}

template <class F>
double rank_mean(const E2eCase& c, F f) {
  double sum = 0;
  for (const RankFigures& r : c.ranks) sum += f(r);
  return c.ranks.empty() ? 0 : sum / double(c.ranks.size());
}

}  // namespace

double E2eReport::tokens_per_s(const E2eCase& c) {
  return rank_mean(c, [&](const RankFigures& r) { return c.tokens / r.step_s; });
}
double E2eReport::full_tokens_per_s(const E2eCase& c) {
  return rank_mean(c, [&](const RankFigures& r) { return c.tokens / r.full_s; });
}
double E2eReport::full_floor_tokens_per_s(const E2eCase& c) {
  return rank_mean(c, [&](const RankFigures& r) { return c.tokens / r.full_floor_s; });
}
double E2eReport::step_over_floor(const E2eCase& c) {
  return rank_mean(c, [](const RankFigures& r) { return r.step_s / r.floor_s; });
}

E2eReport run_e2e_bench(const E2eOptions& options) { return Bench(options).run(); }

}  // namespace trident
