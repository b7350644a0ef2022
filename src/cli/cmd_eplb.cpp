// `trident eplb`: an expert placement for N ranks from an expert load file (what
// --expert-load-file or GET /expert_load wrote), by the policies of DeepSeek's expert-parallel
// load balancer (parallel/placement_policy.h). The placement file starts runs with
// --expert-placement; the table shows each layer's busiest rank before and after.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "parallel/expert_load.h"
#include "parallel/placement_file.h"
#include "parallel/placement_policy.h"

namespace trident::cli {

namespace {

struct EplbArgs {
  std::string load_file;
  std::string output;
  int ranks = 0;
  int redundant = 0;
  int nodes = 1;
  int groups = 0;  // 0: the load file's (the model's n_group)
};

void run_eplb(const EplbArgs& a) {
  const ExpertLoad load = ExpertLoad::read(a.load_file);
  PlacementShape shape;
  shape.n_ranks = a.ranks;
  shape.redundant = a.redundant;
  shape.n_nodes = a.nodes;
  shape.n_groups = a.groups > 0 ? a.groups : load.n_groups();
  const std::vector<LayerPlacementPlan> plans = plan_placements(load, shape);
  write_placement_file(a.output, shape, load.n_experts(), plans);

  std::printf(
      "%s: %lld tokens, %d MoE layers of %d experts -> %d ranks of %d slots (%d redundant)\n",
      a.load_file.c_str(), (long long)load.tokens(), int(plans.size()), load.n_experts(),
      shape.n_ranks, plans.front().slots_per_rank, shape.redundant);
  std::printf("busiest rank over the mean rank, expected from the counts:\n");
  std::printf("%6s  %-12s  %10s  %10s\n", "layer", "policy", "contiguous", "planned");
  double before = 0, after = 0;
  for (const LayerPlacementPlan& p : plans) {
    const double b = max_over_mean(p.contiguous_rank_load), c = max_over_mean(p.rank_load);
    before += b;
    after += c;
    std::printf("%6d  %-12s  %10.3f  %10.3f\n", p.layer, std::string(policy_name(p.policy)).c_str(),
                b, c);
  }
  std::printf("%6s  %-12s  %10.3f  %10.3f\n", "mean", "", before / double(plans.size()),
              after / double(plans.size()));
  std::printf("placement written to %s (start a run with --ep %d --expert-placement %s)\n",
              a.output.c_str(), shape.n_ranks, a.output.c_str());
}

}  // namespace

void register_eplb(CLI::App& app) {
  auto args = std::make_shared<EplbArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eplb", "Place experts on ranks from their load (DeepSeek's EPLB policies)");
  cmd->add_option("--load", args->load_file,
                  "Expert load file, as --expert-load-file or GET /expert_load write it")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--ranks,-n", args->ranks, "Expert-parallel ranks (--ep of the runs)")
      ->required()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--redundant,-r", args->redundant,
                  "Redundant expert copies in all, a multiple of --ranks")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--nodes", args->nodes,
                  "Hosts the ranks span: with several, expert groups are packed onto hosts first "
                  "(hierarchical) when they divide evenly")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--groups", args->groups,
                  "Expert groups for the hierarchical policy (default: the model's n_group)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--output,-o", args->output, "Placement file to write")->required();
  cmd->callback([args] { run_eplb(*args); });
}

}  // namespace trident::cli
