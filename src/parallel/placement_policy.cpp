#include "parallel/placement_policy.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace trident {

namespace {

// A plan's loads are compared with this slack, so sums taken in another order do not flip a
// choice.
constexpr double kLoadSlack = 1e-9;

bool lighter(double a, double b) { return a < b - kLoadSlack * std::max(1.0, std::abs(b)); }

struct Packs {
  std::vector<std::vector<int>> items;  // per pack, item indices
  std::vector<double> load;

  bool has_label(int pack, int label, const std::vector<int>& labels) const {
    if (labels.empty()) return false;
    for (int i : items[pack])
      if (labels[i] == label) return true;
    return false;
  }
};

int label_of(const std::vector<int>& labels, int item) {
  return labels.empty() ? item : labels[item];
}

// Every pack with room holds `item`'s label: move one item of a full pack without that label into
// the lightest pack with room (one whose label that pack lacks, the lightest such), and put `item`
// where it was. Such a pack and item exist while no label has more items than there are packs.
int make_room(Packs& packs, int item, int per_pack, const std::vector<double>& w,
              const std::vector<int>& labels) {
  const int P = int(packs.items.size());
  const int label = label_of(labels, item);
  int open = -1;
  for (int p = 0; p < P; ++p)
    if (int(packs.items[p].size()) < per_pack &&
        (open < 0 || lighter(packs.load[p], packs.load[open])))
      open = p;
  int from = -1, moved = -1;
  for (int p = 0; p < P && open >= 0; ++p) {
    if (p == open || packs.has_label(p, label, labels)) continue;
    for (int j : packs.items[p]) {
      if (packs.has_label(open, label_of(labels, j), labels)) continue;
      if (moved < 0 || lighter(w[j], w[moved])) from = p, moved = j;
    }
  }
  TRI_CHECK(open >= 0 && moved >= 0,
            "expert placement: no pack can take another copy of expert {}; it has more copies "
            "than there are ranks to hold them",
            label);
  auto& src = packs.items[from];
  src.erase(std::find(src.begin(), src.end(), moved));
  packs.items[open].push_back(moved);
  packs.load[from] -= w[moved];
  packs.load[open] += w[moved];
  return from;
}

// Swaps of one item of the heaviest pack for a lighter one of another pack, best first, while one
// lowers the heaviest pack without making the other as heavy.
void improve_by_swaps(Packs& packs, const std::vector<double>& w, const std::vector<int>& labels) {
  const int P = int(packs.items.size());
  const int max_swaps = int(w.size()) * P;
  for (int swaps = 0; swaps < max_swaps; ++swaps) {
    int heavy = 0;
    for (int p = 1; p < P; ++p)
      if (lighter(packs.load[heavy], packs.load[p])) heavy = p;
    double best_max = packs.load[heavy];
    int best_other = -1, best_a = -1, best_b = -1;
    for (int other = 0; other < P; ++other) {
      if (other == heavy) continue;
      for (int a : packs.items[heavy]) {
        for (int b : packs.items[other]) {
          const double d = w[a] - w[b];
          if (d <= 0) continue;
          const double pair_max = std::max(packs.load[heavy] - d, packs.load[other] + d);
          if (!lighter(pair_max, best_max)) continue;
          const int la = label_of(labels, a), lb = label_of(labels, b);
          // After the swap neither pack may hold a label twice.
          if (la != lb &&
              (packs.has_label(other, la, labels) || packs.has_label(heavy, lb, labels)))
            continue;
          best_max = pair_max, best_other = other, best_a = a, best_b = b;
        }
      }
    }
    if (best_other < 0) return;
    auto& h = packs.items[heavy];
    auto& o = packs.items[best_other];
    *std::find(h.begin(), h.end(), best_a) = best_b;
    *std::find(o.begin(), o.end(), best_b) = best_a;
    const double d = w[best_a] - w[best_b];
    packs.load[heavy] -= d;
    packs.load[best_other] += d;
  }
}

void check_shape(int n_experts, const PlacementShape& s) {
  const int R = s.n_ranks;
  TRI_CHECK(R >= 1 && n_experts >= R && n_experts % R == 0,
            "expert placement: {} experts do not split evenly over {} ranks: use a rank count "
            "that divides {}",
            n_experts, R, n_experts);
  TRI_CHECK(s.redundant >= 0 && s.redundant % R == 0,
            "expert placement: {} redundant copies do not split evenly over {} ranks: use a "
            "multiple of {}",
            s.redundant, R, R);
  TRI_CHECK(s.n_nodes >= 1 && R % s.n_nodes == 0,
            "expert placement: {} ranks do not split evenly over {} nodes", R, s.n_nodes);
}

// Groups of experts onto nodes, then copies within each node onto its ranks.
ExpertPlacement place_by_policy(const std::vector<double>& load, const PlacementShape& s,
                                int n_groups, int n_nodes) {
  const int E = int(load.size()), R = s.n_ranks;
  const int per_group = E / n_groups, ranks_per_node = R / n_nodes;
  const int physical_per_node = (E + s.redundant) / n_nodes;
  const int slots = (E + s.redundant) / R;
  TRI_CHECK(slots <= E / n_nodes,
            "expert placement: {} slots per rank exceed the {} experts of each of {} nodes, so a "
            "rank would hold one expert twice; use fewer redundant copies",
            slots, E / n_nodes, n_nodes);

  std::vector<double> group_load(n_groups, 0.0);
  for (int e = 0; e < E; ++e) group_load[e / per_group] += load[e];
  const std::vector<int> node_of_group = balanced_packing(group_load, n_nodes);

  std::vector<std::vector<int>> experts_of_rank(R);
  for (int node = 0; node < n_nodes; ++node) {
    std::vector<int> experts;  // of this node, ascending
    for (int e = 0; e < E; ++e)
      if (node_of_group[e / per_group] == node) experts.push_back(e);
    std::vector<double> node_load(experts.size());
    for (size_t i = 0; i < experts.size(); ++i) node_load[i] = load[experts[i]];
    const std::vector<int> copies = replicate_experts(node_load, physical_per_node, ranks_per_node);
    std::vector<double> weight;
    std::vector<int> expert_of_item;
    for (size_t i = 0; i < experts.size(); ++i)
      for (int c = 0; c < copies[i]; ++c) {
        weight.push_back(node_load[i] / copies[i]);
        expert_of_item.push_back(experts[i]);
      }
    const std::vector<int> rank_in_node = balanced_packing(weight, ranks_per_node, expert_of_item);
    for (size_t item = 0; item < weight.size(); ++item)
      experts_of_rank[node * ranks_per_node + rank_in_node[item]].push_back(expert_of_item[item]);
  }
  for (auto& experts : experts_of_rank) std::sort(experts.begin(), experts.end());
  return ExpertPlacement::from_ranks(E, std::move(experts_of_rank));
}

}  // namespace

std::string_view policy_name(PlacementPolicy policy) {
  switch (policy) {
    case PlacementPolicy::Hierarchical:
      return "hierarchical";
    case PlacementPolicy::Global:
      return "global";
    case PlacementPolicy::Contiguous:
      return "contiguous";
  }
  return "?";
}

std::vector<int> balanced_packing(const std::vector<double>& weights, int n_packs,
                                  const std::vector<int>& labels) {
  const int n = int(weights.size());
  TRI_CHECK(n_packs >= 1 && n % n_packs == 0,
            "balanced packing: {} items do not fill {} packs evenly", n, n_packs);
  TRI_CHECK(labels.empty() || int(labels.size()) == n, "balanced packing: {} labels for {} items",
            labels.size(), n);
  const int per_pack = n / n_packs;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return weights[a] > weights[b]; });
  Packs packs{std::vector<std::vector<int>>(n_packs), std::vector<double>(n_packs, 0.0)};
  for (int item : order) {
    const int label = label_of(labels, item);
    int best = -1;
    for (int p = 0; p < n_packs; ++p) {
      if (int(packs.items[p].size()) >= per_pack || packs.has_label(p, label, labels)) continue;
      if (best < 0 || lighter(packs.load[p], packs.load[best])) best = p;
    }
    if (best < 0) best = make_room(packs, item, per_pack, weights, labels);
    packs.items[best].push_back(item);
    packs.load[best] += weights[item];
  }
  improve_by_swaps(packs, weights, labels);
  std::vector<int> pack_of(n, -1);
  for (int p = 0; p < n_packs; ++p)
    for (int item : packs.items[p]) pack_of[item] = p;
  return pack_of;
}

std::vector<int> replicate_experts(const std::vector<double>& load, int n_physical,
                                   int max_copies) {
  const int E = int(load.size());
  TRI_CHECK(n_physical >= E, "expert placement: {} slots cannot hold {} experts", n_physical, E);
  std::vector<int> copies(E, 1);
  for (int extra = E; extra < n_physical; ++extra) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (copies[e] >= max_copies) continue;
      if (best < 0 || load[e] * copies[best] > load[best] * copies[e]) best = e;
    }
    TRI_CHECK(best >= 0,
              "expert placement: {} copies of {} experts need more than {} copies of one expert, "
              "one per rank; use fewer redundant copies",
              n_physical, E, max_copies);
    ++copies[best];
  }
  return copies;
}

ExpertPlacement keep_in_place(const ExpertPlacement& plan, const ExpertPlacement& current,
                              int n_nodes) {
  const int R = plan.n_ranks();
  TRI_CHECK(current.n_ranks() == R && current.n_experts() == plan.n_experts() && n_nodes >= 1 &&
                R % n_nodes == 0,
            "keep_in_place: a plan for {} ranks and {} experts against a placement for {} and {} "
            "over {} nodes",
            R, plan.n_experts(), current.n_ranks(), current.n_experts(), n_nodes);
  const int per_node = R / n_nodes;
  std::vector<std::vector<int>> renumbered(R);
  for (int node = 0; node < n_nodes; ++node) {
    const int first = node * per_node;
    std::vector<std::vector<int>> kept(per_node, std::vector<int>(per_node, 0));
    for (int a = 0; a < per_node; ++a)
      for (int e : plan.experts_of(first + a))
        for (int b = 0; b < per_node; ++b) kept[a][b] += current.holds(first + b, e) ? 1 : 0;
    std::vector<bool> planned_done(per_node, false), rank_taken(per_node, false);
    for (int n = 0; n < per_node; ++n) {
      int best_a = -1, best_b = -1;
      for (int a = 0; a < per_node; ++a)
        for (int b = 0; b < per_node && !planned_done[a]; ++b)
          if (!rank_taken[b] && (best_a < 0 || kept[a][b] > kept[best_a][best_b]))
            best_a = a, best_b = b;
      planned_done[best_a] = rank_taken[best_b] = true;
      renumbered[first + best_b] = plan.experts_of(first + best_a);
    }
  }
  return ExpertPlacement::from_ranks(plan.n_experts(), std::move(renumbered));
}

std::vector<double> expected_rank_loads(const ExpertPlacement& placement,
                                        const std::vector<double>& load) {
  TRI_CHECK(int(load.size()) == placement.n_experts(),
            "expert placement of {} experts weighed with {} loads", placement.n_experts(),
            load.size());
  std::vector<double> rank_load(placement.n_ranks(), 0.0);
  for (int r = 0; r < placement.n_ranks(); ++r)
    for (int e : placement.experts_of(r))
      rank_load[r] += load[e] / double(placement.ranks_of(e).size());
  return rank_load;
}

LayerPlacementPlan describe_placement(const ExpertPlacement& placement,
                                      const std::vector<double>& load, PlacementPolicy policy) {
  LayerPlacementPlan plan;
  plan.policy = policy;
  plan.placement = placement;
  const PhysicalExpertMap m = placement.physical_map();
  plan.slots_per_rank = m.slots_per_rank;
  plan.physical_to_logical.assign(size_t(placement.n_ranks()) * m.slots_per_rank, -1);
  for (int r = 0; r < placement.n_ranks(); ++r) {
    const std::vector<int>& experts = placement.experts_of(r);
    for (size_t i = 0; i < experts.size(); ++i)
      plan.physical_to_logical[size_t(r) * m.slots_per_rank + i] = experts[i];
  }
  plan.logical_to_physical.resize(placement.n_experts());
  plan.logical_count = m.copies;
  for (int e = 0; e < placement.n_experts(); ++e)
    for (int c = 0; c < m.copies[e]; ++c)
      plan.logical_to_physical[e].push_back(m.physical[size_t(e) * m.max_copies + c]);
  plan.rank_load = expected_rank_loads(placement, load);
  return plan;
}

LayerPlacementPlan plan_layer(const std::vector<double>& load, const PlacementShape& shape) {
  const int E = int(load.size());
  check_shape(E, shape);
  for (double v : load) TRI_CHECK(v >= 0, "expert placement: an expert load of {} is negative", v);
  const bool hierarchical = shape.n_nodes > 1 && shape.n_groups >= 1 && E % shape.n_groups == 0 &&
                            shape.n_groups % shape.n_nodes == 0;
  const ExpertPlacement by_policy =
      hierarchical ? place_by_policy(load, shape, shape.n_groups, shape.n_nodes)
                   : place_by_policy(load, shape, 1, 1);
  const ExpertPlacement contiguous = ExpertPlacement::contiguous(E, shape.n_ranks, shape.redundant);
  LayerPlacementPlan plan = describe_placement(
      by_policy, load, hierarchical ? PlacementPolicy::Hierarchical : PlacementPolicy::Global);
  plan.contiguous_rank_load = expected_rank_loads(contiguous, load);
  const double policy_max = *std::max_element(plan.rank_load.begin(), plan.rank_load.end());
  const double contiguous_max =
      *std::max_element(plan.contiguous_rank_load.begin(), plan.contiguous_rank_load.end());
  if (lighter(contiguous_max, policy_max)) {
    std::vector<double> contiguous_load = plan.contiguous_rank_load;
    plan = describe_placement(contiguous, load, PlacementPolicy::Contiguous);
    plan.contiguous_rank_load = std::move(contiguous_load);
  }
  return plan;
}

std::vector<LayerPlacementPlan> plan_placements(const ExpertLoad& load,
                                                const PlacementShape& shape) {
  std::vector<LayerPlacementPlan> plans;
  for (int l : load.moe_layers()) {
    plans.push_back(plan_layer(load.layer_load(l), shape));
    plans.back().layer = l;
  }
  return plans;
}

}  // namespace trident
