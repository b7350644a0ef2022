"""The expert-parallel kernels (kernels/ep_dispatch.py, kernels/ep_low_latency.py) against the
plain-torch reference (ep_reference.py), on fresh random inputs with ragged shapes and poisoned
outputs. By default under Triton's interpreter on the CPU (TRITON_INTERPRET=1); with
EP_KERNELS_DEVICE=cuda on a GPU, where every rank of the low-latency tests is a set of buffers on
the one GPU and the kernels really wait on each other's flags.

    python3 -m pytest -q tests/ep/kernels
"""
import os
import sys
from pathlib import Path

ON_GPU = os.environ.get("EP_KERNELS_DEVICE") == "cuda"
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if not ON_GPU:
    sys.path.insert(0, str(ROOT / "kernels" / "tests"))
    import interpreter  # noqa: F401  (sets TRITON_INTERPRET=1; before triton)
sys.path.insert(0, str(ROOT / "kernels"))

import pytest  # noqa: E402
import torch  # noqa: E402

import ep_dispatch  # noqa: E402
import ep_low_latency as ll  # noqa: E402
from ep_reference import (contiguous, payload_as_received, physical_map, plan,  # noqa: E402
                          quantize, row_layout, toy_experts)

DEV = "cuda" if ON_GPU else "cpu"
H_SIZES = [7168, 4096] if ON_GPU else [256, 160]
POISON = 0x7F


def random_batch(T, H, K, E, seed, allowed=None):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, H, generator=g) * 2).to(torch.bfloat16)
    pool = torch.tensor(allowed if allowed else list(range(E)))
    assert len(pool) >= K, f"{K} distinct experts a token from {len(pool)}"
    ids = torch.stack([pool[torch.randperm(len(pool), generator=g)[:K]] for _ in range(T)]) \
        if T else torch.zeros(0, K, dtype=torch.int64)
    w = torch.rand(T, K, generator=g)
    return x.to(DEV), ids.to(torch.int32).to(DEV), w.to(DEV)


def row_views(buf, n, H, K, fp8):
    """(payload bytes, ids, weights) of n rows in a byte buffer."""
    ids_off, row_bytes = row_layout(H, K, fp8)
    rows = buf[:n * row_bytes].view(n, row_bytes)
    ids = rows[:, ids_off:ids_off + 4 * K].contiguous().view(torch.int32)
    w = rows[:, ids_off + 4 * K:ids_off + 8 * K].contiguous().view(torch.float32)
    return rows[:, :ids_off], ids, w


@pytest.mark.parametrize("fp8", [0, 1])
@pytest.mark.parametrize("H", H_SIZES)
def test_pack_then_unpack_gives_the_tokens_ids_and_weights_the_plan_sends(fp8, H):
    K, E, R = 3, 8, 3
    experts = contiguous(E, R, 3)
    x, ids, w = random_batch(11, H, K, E, seed=H + fp8)
    rows = plan(experts, E, ids.cpu(), source=1)
    send_token = torch.tensor([t for _, t, _ in rows], dtype=torch.int32, device=DEV)
    send_ids = torch.tensor([i for _, _, i in rows], dtype=torch.int32, device=DEV)
    n = len(rows)
    ids_off, row_bytes = row_layout(H, K, fp8)
    buf = torch.full((n * row_bytes, ), POISON, dtype=torch.uint8, device=DEV)
    ep_dispatch.ep_pack[(n, )](x, send_token, send_ids, w, buf, H, K, ids_off, row_bytes, FP8=fp8,
                               GROUPS=ep_dispatch.GROUPS, K_BLOCK=ep_dispatch.K_BLOCK)
    payload, got_ids, got_w = row_views(buf.cpu(), n, H, K, fp8)
    sent = x.cpu()[send_token.cpu().long()]
    if fp8:
        q, scale = quantize(sent)
        assert torch.equal(payload[:, :H], q.view(torch.uint8))
        assert torch.equal(payload[:, H:].contiguous().view(torch.float32), scale)
    else:
        assert torch.equal(payload.contiguous().view(torch.bfloat16), sent)
    assert torch.equal(got_ids, send_ids.cpu())
    assert torch.equal(got_w, w.cpu()[send_token.cpu().long()])

    x_out = torch.full((n, H), float("nan"), dtype=torch.bfloat16, device=DEV)
    ids_out = torch.full((n, K), -7, dtype=torch.int32, device=DEV)
    w_out = torch.full((n, K), float("nan"), device=DEV)
    ep_dispatch.ep_unpack[(n, )](buf, x_out, ids_out, w_out, H, K, ids_off, row_bytes, FP8=fp8,
                                 GROUPS=ep_dispatch.GROUPS, K_BLOCK=ep_dispatch.K_BLOCK)
    assert torch.equal(x_out.cpu(), payload_as_received(sent, fp8))
    assert torch.equal(ids_out.cpu(), send_ids.cpu())
    assert torch.equal(w_out.cpu(), w.cpu()[send_token.cpu().long()])


@pytest.mark.parametrize("H", H_SIZES + [48])
def test_combine_adds_each_tokens_partials_in_rank_order(H):
    T, R, n = 9, 4, 20
    g = torch.Generator().manual_seed(H)
    partials = torch.randn(n, H, generator=g).to(torch.bfloat16)
    row_of = torch.full((T, R), -1, dtype=torch.int32)
    rows = torch.randperm(n, generator=g)
    for i in range(n):
        t, r = divmod(int(rows[i]), R)
        if t < T:
            row_of[t, r] = i
    row_of[3] = -1  # a token no rank computed anything for
    out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEV)
    block = ep_dispatch.COMBINE_BLOCK
    ep_dispatch.ep_combine[(T, (H + block - 1) // block)](partials.to(DEV), row_of.to(DEV), out, R,
                                                          H, BLOCK=block)
    want = torch.zeros(T, H)
    for t in range(T):
        for r in range(R):
            if row_of[t, r] >= 0:
                want[t] += partials[row_of[t, r]].float()
    assert torch.equal(out.cpu(), want.to(torch.bfloat16))


class LowLatencyRanks:
    """R ranks' shared buffers and local state for the low-latency kernels, all on one device;
    a rank's peers are the others' buffers, addressed directly (as IPC-mapped memory would be)."""

    def __init__(self, experts, E, H, K, cap, fp8):
        self.experts, self.E, self.H, self.K, self.cap, self.fp8 = experts, E, H, K, cap, fp8
        self.R = R = len(experts)
        self.ids_off, self.row_bytes = row_layout(H, K, fp8)
        self.combine_off = R * cap * self.row_bytes
        self.dflags_off = (self.combine_off + R * cap * H * 2 + 15) // 16 * 16
        self.cflags_off = self.dflags_off + 8 * R
        size = self.cflags_off + 8 * R
        self.bufs = [torch.full((size, ), POISON, dtype=torch.uint8, device=DEV) for _ in range(R)]
        for b in self.bufs:  # flags start at epoch 0
            b[self.dflags_off:].zero_()
        self.peers = torch.tensor([b.data_ptr() for b in self.bufs], dtype=torch.int64,
                                  device=DEV)
        phys, copies, self.C, self.S = physical_map(E, experts)
        self.phys, self.copies = phys.to(DEV), copies.to(DEV)

        def zeros(n, dtype):
            return [torch.zeros(n, dtype=dtype, device=DEV) for _ in range(R)]

        self.send_counter = zeros(ll.R_BLOCK, torch.int32)
        self.send_slot = zeros(cap * R, torch.int32)
        self.recv_count = zeros(R, torch.int32)
        self.done = zeros(1, torch.int32)
        self.epoch = zeros(1, torch.int64)
        self.status = zeros(1, torch.int32)
        self.x = [torch.full((R * cap, H), float("nan"), dtype=torch.bfloat16, device=DEV)
                  for _ in range(R)]
        self.ids = [torch.full((R * cap, K), -7, dtype=torch.int32, device=DEV) for _ in range(R)]
        self.w = [torch.full((R * cap, K), float("nan"), device=DEV) for _ in range(R)]

    def dispatch_send(self, me, x, ids, w, programs=3):
        ll.ep_ll_dispatch_send[(programs, )](
            x, ids, w, x.shape[0], self.phys, self.copies, self.C, self.S, self.E, self.peers, me,
            self.R, self.cap, self.dflags_off, self.send_counter[me], self.send_slot[me],
            self.done[me], self.epoch[me], self.H, self.K, self.ids_off, self.row_bytes,
            FP8=self.fp8, GROUPS=ll.GROUPS, K_BLOCK=ll.K_BLOCK, R_BLOCK=ll.R_BLOCK,
            C_BLOCK=ll.C_BLOCK)

    def dispatch_recv(self, me, programs=4, timeout_ns=2_000_000_000):
        ll.ep_ll_dispatch_recv[(programs, )](
            self.bufs[me], self.x[me], self.ids[me], self.w[me], self.recv_count[me],
            self.epoch[me], self.status[me], timeout_ns, self.R, self.cap, self.E,
            self.dflags_off, self.H, self.K, self.ids_off, self.row_bytes, FP8=self.fp8,
            GROUPS=ll.GROUPS, K_BLOCK=ll.K_BLOCK, R_BLOCK=ll.R_BLOCK, TIMER=int(ON_GPU))

    def combine_send(self, me, expert_out, programs=3):
        ll.ep_ll_combine_send[(programs, )](
            expert_out, self.peers, me, self.R, self.cap, self.combine_off, self.cflags_off,
            self.recv_count[me], self.done[me], self.epoch[me], self.H, BLOCK=ll.COPY_BLOCK,
            R_BLOCK=ll.R_BLOCK)

    def combine_recv(self, me, out, programs=2, timeout_ns=2_000_000_000):
        ll.ep_ll_combine_recv[(programs, )](
            self.bufs[me], out, out.shape[0], self.send_slot[me], self.R, self.cap,
            self.combine_off, self.cflags_off, self.done[me], self.epoch[me], self.status[me],
            timeout_ns, self.H, BLOCK=ll.COPY_BLOCK, R_BLOCK=ll.R_BLOCK, TIMER=int(ON_GPU))


def exchange_and_check(ranks, batches):
    """One low-latency dispatch and combine over all ranks, checked row by row against the plan
    and token by token against the reference combine."""
    R, cap, H, K, E = ranks.R, ranks.cap, ranks.H, ranks.K, ranks.E
    for me in range(R):
        ranks.dispatch_send(me, *batches[me])
    for me in range(R):
        ranks.dispatch_recv(me)
    assert all(int(s.item()) == 0 for s in ranks.status)
    expert_out = []
    for d in range(R):
        x, ids, w = ranks.x[d].cpu(), ranks.ids[d].cpu(), ranks.w[d].cpu()
        for s in range(R):
            sent = [(t, i) for dd, t, i in plan(ranks.experts, E, batches[s][1].cpu(), s) if dd == d]
            assert int(ranks.recv_count[d][s]) == len(sent), f"rank {d} from {s}"
            slots = ranks.send_slot[s].cpu().view(cap, R)
            for t, want_ids in sent:
                j = s * cap + int(slots[t, d])
                assert torch.equal(ids[j], torch.tensor(want_ids, dtype=torch.int32))
                assert torch.equal(w[j], batches[s][2].cpu()[t])
                assert torch.equal(x[j], payload_as_received(batches[s][0].cpu()[t:t + 1],
                                                              ranks.fp8)[0])
            for j in range(s * cap + len(sent), (s + 1) * cap):
                assert bool((ids[j] == E).all()) and bool((w[j] == 0).all()), "empty slot"
        expert_out.append(toy_experts(torch.nan_to_num(x), ids, w, E).to(DEV))
    for d in range(R):
        ranks.combine_send(d, expert_out[d])
    outs = []
    for me in range(R):
        out = torch.full((batches[me][0].shape[0], H), float("nan"), dtype=torch.bfloat16,
                         device=DEV)
        ranks.combine_recv(me, out)
        outs.append(out)
    assert all(int(s.item()) == 0 for s in ranks.status)
    for me in range(R):
        x, ids, w = (b.cpu() for b in batches[me])
        slots = ranks.send_slot[me].cpu().view(cap, R)
        want = torch.zeros(x.shape[0], H)
        for d, t, _ in plan(ranks.experts, E, ids, me):
            want[t] += expert_out[d].cpu()[me * cap + int(slots[t, d])].float()
        assert torch.equal(outs[me].cpu(), want.to(torch.bfloat16)), f"rank {me}"


LL_CASES = {
    # name: (experts of each rank, tokens per rank, all tokens to rank 0's experts)
    "two_ranks": (contiguous(8, 2), [5, 3], False),
    "ranks_without_tokens": (contiguous(8, 4), [0, 6, 0, 2], False),
    "skewed_to_rank_0": (contiguous(16, 4), [4, 3, 5, 1], True),
    "redundant_copies": (contiguous(8, 4, 4), [6, 2, 5, 3], False),
}


@pytest.mark.parametrize("fp8", [0, 1])
@pytest.mark.parametrize("case", sorted(LL_CASES))
def test_low_latency_exchange_delivers_every_row_and_combines_in_rank_order(case, fp8):
    experts, tokens, skew = LL_CASES[case]
    H, K, E, cap = H_SIZES[-1], 3, max(max(e) for e in experts) + 1, 8
    ranks = LowLatencyRanks(experts, E, H, K, cap, fp8)
    for round_ in range(2):  # a second exchange: epochs advance, counters start again at 0
        batches = [random_batch(T + round_, H, K, E, seed=100 * round_ + r,
                                allowed=experts[0] if skew else None)
                   for r, T in enumerate(tokens)]
        exchange_and_check(ranks, batches)
    if skew:  # the other ranks got nothing from anyone
        assert all(int(ranks.recv_count[d].sum()) == 0 for d in range(1, ranks.R))


def test_a_rank_that_never_sends_is_named_and_nobody_waits_forever():
    experts = contiguous(8, 3)
    ranks = LowLatencyRanks(experts, 8, H_SIZES[-1], 2, 4, 0)
    batches = [random_batch(3, ranks.H, 2, 8, seed=r) for r in range(3)]
    for me in (0, 2):  # rank 1 is gone
        ranks.dispatch_send(me, *batches[me])
    ranks.dispatch_recv(0, timeout_ns=50_000_000)
    status = int(ranks.status[0].item())
    assert status == (ll.PHASE_DISPATCH << 16) | (1 + 1), hex(status)
    assert int(ranks.recv_count[0][1]) == 0
