"""What the expert-parallel kernels must compute, in plain torch on the host: expert placement
with the logical-to-physical map, the destination of each token's experts, the rows a rank sends,
and the FP8 payload (the C++ reference is src/parallel; these mirror it for the kernel tests)."""
import torch

GROUP = 128


def contiguous(n_experts, n_ranks, redundant=0):
    """The experts of each rank, as ExpertPlacement::contiguous places them."""
    base, extra = divmod(n_experts, n_ranks)
    ranks, nxt = [], 0
    for r in range(n_ranks):
        block = base + (1 if r < extra else 0)
        ranks.append(list(range(nxt, nxt + block)))
        nxt += block
    for r in range(n_ranks):
        after = ranks[r][-1]
        ranks[r] += [(after + i) % n_experts for i in range(1, redundant // n_ranks + 1)]
    return ranks


def physical_map(n_experts, experts_of_rank):
    """(physical [E, C] i32, copies [E] i32, C, slots per rank): physical slot rank * S + index of
    each copy of each logical expert, copies in rank order, -1 padding."""
    S = max(len(r) for r in experts_of_rank)
    holders = [[] for _ in range(n_experts)]
    for rank, experts in enumerate(experts_of_rank):
        for slot, e in enumerate(experts):
            holders[e].append(rank * S + slot)
    C = max(len(h) for h in holders)
    phys = torch.full((n_experts, C), -1, dtype=torch.int32)
    for e, h in enumerate(holders):
        phys[e, :len(h)] = torch.tensor(h, dtype=torch.int32)
    copies = torch.tensor([len(h) for h in holders], dtype=torch.int32)
    return phys, copies, C, S


def rank_for(experts_of_rank, expert, source, token):
    holders = [r for r, ex in enumerate(experts_of_rank) if expert in ex]
    if source in holders:
        return source
    return holders[(token + source) % len(holders)]


def row_layout(H, K, fp8):
    """(ids_off, row_bytes) of a dispatched row (kernels/ep_rows.py)."""
    payload = H + 4 * ((H + GROUP - 1) // GROUP) if fp8 else 2 * H
    return payload, (payload + 8 * K + 15) // 16 * 16


def quantize(x):
    """x [T, H] bf16 -> (codes [T, H] e4m3, scales [T, G] f32), DeepSeek's activation quant."""
    T, H = x.shape
    G = (H + GROUP - 1) // GROUP
    f = torch.nn.functional.pad(x.float(), (0, G * GROUP - H)).view(T, G, GROUP)
    scale = f.abs().amax(dim=2).clamp_min(1e-10) / 448.0
    q = (f / scale[:, :, None]).to(torch.float8_e4m3fn).view(T, G * GROUP)[:, :H]
    return q, scale


def payload_as_received(x, fp8):
    """The bf16 tokens a destination unpacks."""
    if not fp8:
        return x
    q, scale = quantize(x)
    T, H = x.shape
    G = scale.shape[1]
    f = torch.nn.functional.pad(q.float(), (0, G * GROUP - H)).view(T, G, GROUP)
    return (f * scale[:, :, None]).view(T, G * GROUP)[:, :H].to(torch.bfloat16)


def plan(experts_of_rank, n_experts, ids, source):
    """Rows source sends, by destination then token: [(dest, token, ids as dest applies them)];
    ids of experts another rank computes become n_experts."""
    E = n_experts
    T, K = ids.shape
    dest = [[rank_for(experts_of_rank, int(ids[t, j]), source, t) for j in range(K)]
            for t in range(T)]
    rows = []
    for d in range(len(experts_of_rank)):
        for t in range(T):
            if d in dest[t]:
                rows.append((d, t, [int(ids[t, j]) if dest[t][j] == d else E for j in range(K)]))
    return rows


def toy_experts(x, ids, weights, n_experts):
    """A stand-in for the experts: expert e multiplies its input by (e + 1) / 8; the output is the
    gate-weighted sum over the token's experts here (ids == E: elsewhere), in bf16."""
    scale = torch.where(ids < n_experts, (ids.float() + 1) / 8, torch.zeros_like(weights))
    return (x.float() * (weights * scale).sum(dim=1, keepdim=True)).to(torch.bfloat16)
