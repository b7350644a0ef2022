#include "cli/launcher.h"

#include <omp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>
#include <vector>

#include "core/error.h"

namespace trident::cli {

namespace {

// Set in the environment of the ranks a relaunch starts, so a rank that somehow does not see
// mpirun's environment fails instead of relaunching again.
constexpr const char* kRelaunchedVar = "TRIDENT_EP_RELAUNCHED";

std::vector<std::string> own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t at = 0; at < all.size();) {
    size_t end = all.find('\0', at);
    if (end == std::string::npos) end = all.size();
    args.push_back(all.substr(at, end - at));
    at = end + 1;
  }
  TRI_CHECK(!args.empty(), "cannot read this process's command line from /proc/self/cmdline");
  return args;
}

[[noreturn]] void relaunch_under_mpirun(int n_ranks) {
  TRI_CHECK(!std::getenv(kRelaunchedVar),
            "this rank was started by `--ep` under mpirun but sees no MPI environment "
            "(OMPI_COMM_WORLD_SIZE); is `mpirun` OpenMPI's?");
  std::vector<std::string> own = own_command_line();
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  TRI_CHECK(n > 0, "cannot find this program's path (/proc/self/exe): {}", std::strerror(errno));
  exe[n] = '\0';

  const char* chosen = std::getenv("TRIDENT_MPIRUN");
  std::vector<std::string> cmd = {chosen ? chosen : "mpirun", "-np", std::to_string(n_ranks),
                                  // Ranks may outnumber cores (CPU ranks in CI), and each rank
                                  // runs its own OpenMP threads over the cores it is given.
                                  "--oversubscribe", "--bind-to", "none"};
  if (geteuid() == 0) cmd.push_back("--allow-run-as-root");
  cmd.push_back(exe);
  cmd.insert(cmd.end(), own.begin() + 1, own.end());

  // The cores are shared by the ranks unless the user says otherwise.
  if (!std::getenv("OMP_NUM_THREADS")) {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    setenv("OMP_NUM_THREADS", std::to_string(std::max(1u, cores / unsigned(n_ranks))).c_str(), 1);
  }
  setenv(kRelaunchedVar, "1", 1);

  std::vector<char*> argv;
  for (std::string& a : cmd) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  // A blocked signal stays blocked across exec: mpirun must see the stop signals a user sends,
  // whatever this process had blocked (serve blocks them for its own handler).
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  execvp(argv[0], argv.data());
  fail(
      "--ep {} starts its ranks with `{}`, which could not be run ({}); install OpenMPI "
      "(openmpi-bin) or name its mpirun in TRIDENT_MPIRUN",
      n_ranks, argv[0], std::strerror(errno));
}

}  // namespace

ExpertParallelOptions ParallelArgs::options() const {
  ExpertParallelOptions o;
  o.dispatch = dispatch == "normal"        ? DispatchModeChoice::Normal
               : dispatch == "low-latency" ? DispatchModeChoice::LowLatency
                                           : DispatchModeChoice::Auto;
  o.payload = payload == "fp8"          ? PayloadChoice::Fp8
              : payload == "activation" ? PayloadChoice::Activation
                                        : PayloadChoice::Auto;
  o.load_timeout = std::chrono::milliseconds(int64_t(load_timeout_s * 1000));
  o.low_latency_max_tokens = low_latency_tokens;
  o.max_tokens_per_exchange = max_exchange_tokens;
  return o;
}

EplbOptions ParallelArgs::eplb() const {
  EplbOptions o;
  o.interval = eplb_interval;
  o.n_nodes = eplb_nodes;
  o.load_file = expert_load_file;
  return o;
}

void add_parallel_options(CLI::App& command, ParallelArgs& args) {
  command
      .add_option("--ep", args.ep,
                  "Expert-parallel ranks: routed experts split over N processes (default 1, or "
                  "mpirun's rank count); without mpirun, starts N ranks on this host")
      ->check(CLI::PositiveNumber);
  command
      .add_option("--ep-timeout", args.timeout_s,
                  "Seconds a rank waits for the others in any exchange before stopping them all "
                  "with an error naming the rank that did not arrive")
      ->check(CLI::PositiveNumber);
  command
      .add_option("--ep-load-timeout", args.load_timeout_s,
                  "Seconds ranks wait for each other to finish loading weights")
      ->check(CLI::PositiveNumber);
  command
      .add_option("--ep-low-latency-tokens", args.low_latency_tokens,
                  "Low-latency dispatch (GPU ranks of one host): tokens per rank its buffers "
                  "hold, and the largest batch auto sends that way")
      ->check(CLI::PositiveNumber);
  command
      .add_option("--ep-max-exchange-tokens", args.max_exchange_tokens,
                  "Normal dispatch: tokens a rank sends per exchange at most, larger batches go "
                  "in rounds (0: no limit)")
      ->check(CLI::NonNegativeNumber);
  command
      .add_option("--ep-dispatch", args.dispatch,
                  "Dispatch mode: normal (all-to-all sized by exchanged counts), low-latency "
                  "(GPU decode), or auto (by batch size)")
      ->check(CLI::IsMember({"auto", "normal", "low-latency"}));
  command
      .add_option("--ep-payload", args.payload,
                  "Token payload of the dispatch: fp8 (with per-128 scales), activation, or auto "
                  "(fp8 for FP8 checkpoints)")
      ->check(CLI::IsMember({"auto", "fp8", "activation"}));
  command
      .add_option("--ep-redundant-experts", args.redundant_experts,
                  "Extra expert copies in all (a multiple of the rank count), spread over ranks")
      ->check(CLI::NonNegativeNumber);
  command
      .add_option("--expert-placement", args.expert_placement,
                  "Start with the experts where this placement file (trident eplb) puts them; "
                  "each rank loads only the experts its slots hold")
      ->check(CLI::ExistingFile);
  command
      .add_option("--eplb-interval", args.eplb_interval,
                  "With --ep: every N steps, move experts (with their redundant copies) to even "
                  "out the ranks' load over those steps, without a restart (0: never)")
      ->check(CLI::NonNegativeNumber);
  command
      .add_option("--eplb-nodes", args.eplb_nodes,
                  "Hosts the ranks span: expert groups are kept within hosts when they divide "
                  "evenly (hierarchical placement)")
      ->check(CLI::PositiveNumber);
  command.add_option("--expert-load-file", args.expert_load_file,
                     "At the end, write how many tokens each routed expert of each layer was "
                     "given (JSON, the input of trident eplb)");
}

std::unique_ptr<RankGroup> start_ranks(const ParallelArgs& args, const std::string& device) {
  if (!started_by_mpi_launcher()) {
    if (args.ep > 1) relaunch_under_mpirun(args.ep);
    return nullptr;
  }
  auto group = std::make_unique<RankGroup>(
      device, std::chrono::milliseconds(int64_t(args.timeout_s * 1000)));
  const RankInfo& info = group->info();
  if (args.ep != 0 && args.ep != info.size)
    group->abort(fmt::format("--ep {} but mpirun started {} ranks; pass --ep {} or -np {}", args.ep,
                             info.size, info.size, args.ep));
  if (info.size == 1) return nullptr;
  // Ranks on one host share its cores, unless the user chose the thread count.
  if (!std::getenv("OMP_NUM_THREADS"))
    omp_set_num_threads(std::max(1, omp_get_num_procs() / info.local_size));
  // Rank 0 speaks for the run; the others report only problems, each line naming its rank.
  spdlog::set_pattern(fmt::format("[%H:%M:%S.%e] [rank {}] %^%l%$ %v", info.rank));
  if (info.rank != 0) spdlog::set_level(spdlog::level::warn);
  return group;
}

}  // namespace trident::cli
