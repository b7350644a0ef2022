"""Low-latency dispatch and combine (decode): every rank writes its rows straight into its peers'
receive buffers (GPU memory shared across processes with CUDA IPC, so over NVLink between GPUs),
and signals with flags; no host work and no sizes exchanged, so a step can be captured in a CUDA
graph. Rows are laid out as ep_rows.py says.

Each rank's shared buffer (addresses of all ranks' buffers in peers[R], this rank's included):
    [0, combine_off)          dispatch rows: slot (source s, i) at (s * cap + i) * row_bytes
    [combine_off, ...)        combine rows: slot (expert rank d, i) at (d * cap + i) * H bf16
    dflags_off, cflags_off    R int64 flags each, one per peer: (epoch << 32) | row count
Local state: epoch (exchanges completed; the flags of exchange epoch + 1 are awaited), per-peer
slot counters, send_slot [cap, R] (the slot each token took on each rank, -1 none), recv_count
[R], done counters (the last program to finish a kernel raises the flags), status (the first
peer that did not arrive in time: (phase << 16) | (rank + 1); phase 1 dispatch, 2 combine).

    ep_ll_dispatch_send   token t of this rank -> one row on each rank computing one of its
                          experts (chosen through the logical-to-physical expert map exactly as
                          ExpertPlacement::rank_for does); payload quantized once per token
    ep_ll_dispatch_recv   waits for every peer's dispatch flag, then slot (s, i) -> x[s * cap + i],
                          ids, weights; empty slots get ids E (no expert) and weight 0
    ep_ll_combine_send    expert output of slot (s, i) -> rank s's combine rows at (me, i)
    ep_ll_combine_recv    waits for every peer's combine flag; out[t] = sum over ranks d (in rank
                          order, f32) of the row token t got back from d; then epoch += 1

Waits give up after timeout_ns (status names the peer, the host raises the error) instead of
hanging. Up to R_BLOCK ranks, K_BLOCK experts a token, C_BLOCK copies an expert; tokens a rank
sends per exchange at most cap (the host splits larger batches). Memory ordering: rows are plain
stores; each program's done-counter increment is a system-scope release, the last program's
acquires them all before it stores the flags with system-scope release; readers acquire the flags.
"""
import triton
import triton.language as tl
from triton.language.extra.cuda import globaltimer

from ep_rows import chunk_columns, copy_row_out, quantize_chunk, store_chunk, store_meta
from variant import Kernel, Variant

GROUPS = 8
K_BLOCK = 16
R_BLOCK = 64
C_BLOCK = 16
COPY_BLOCK = 1024
PHASE_DISPATCH = 1
PHASE_COMBINE = 2


@triton.jit
def _rank_for(ids, k_in, t, me, physical_ptr, copies_ptr, max_copies, slots_per_rank,
              C_BLOCK: tl.constexpr):
    """The rank computing each expert of token t: this rank when it holds a copy, else the copies
    take turns by token ((t + me) % copies), as ExpertPlacement::rank_for."""
    n = tl.load(copies_ptr + ids, mask=k_in, other=1)
    c = tl.arange(0, C_BLOCK)
    phys = tl.load(physical_ptr + ids[:, None] * max_copies + c[None, :],
                   mask=k_in[:, None] & (c[None, :] < n[:, None]), other=-1)
    holder = tl.where(phys >= 0, phys // slots_per_rank, -1)
    here = tl.max((holder == me).to(tl.int32), axis=1) > 0
    pick = (t + me) % n
    chosen = tl.sum(tl.where(c[None, :] == pick[:, None], holder, 0), axis=1)
    return tl.where(here, me, chosen)


@triton.jit
def _wait_flags(flag_ptrs, in_range, expected, timeout_ns, status_ptr, phase,
                TIMER: tl.constexpr, R_BLOCK: tl.constexpr):
    """Row counts in the flags once each reads epoch `expected`; a flag still missing after
    timeout_ns counts 0 rows, and the first such peer goes to status."""
    v = tl.atomic_add(flag_ptrs, 0, mask=in_range, sem="acquire", scope="sys")
    arrived = ((v >> 32) == expected) | (~in_range)
    if TIMER:
        start = globaltimer()
        now = start
        while (tl.min(arrived.to(tl.int32), axis=0) == 0) & (now - start < timeout_ns):
            v = tl.atomic_add(flag_ptrs, 0, mask=in_range, sem="acquire", scope="sys")
            arrived = ((v >> 32) == expected) | (~in_range)
            now = globaltimer()
    r = tl.arange(0, R_BLOCK)
    first_missing = tl.min(tl.where(arrived, R_BLOCK, r), axis=0)
    if first_missing < R_BLOCK:
        tl.atomic_cas(status_ptr, 0, phase * 65536 + first_missing + 1, sem="relaxed",
                      scope="gpu")
    return tl.where(arrived & in_range, v & 0xFFFFFFFF, 0).to(tl.int32)


@triton.jit
def _raise_flags(peers, in_range, flags_off, me, value, counts):
    ptrs = (peers + flags_off + me * 8).to(tl.pointer_type(tl.int64))
    tl.atomic_xchg(ptrs, value * 4294967296 + counts.to(tl.int64), mask=in_range, sem="release",
                   scope="sys")


@triton.jit
def ep_ll_dispatch_send(x_ptr, ids_ptr, weights_ptr, T, physical_ptr, copies_ptr, max_copies,
                        slots_per_rank, E, peers_ptr, me, R, cap, dflags_off, send_counter_ptr,
                        send_slot_ptr, done_ptr, epoch_ptr, H, K, ids_off, row_bytes,
                        FP8: tl.constexpr, GROUPS: tl.constexpr, K_BLOCK: tl.constexpr,
                        R_BLOCK: tl.constexpr, C_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    exchange = tl.load(epoch_ptr) + 1
    r = tl.arange(0, R_BLOCK)
    r_in = r < R
    peers = tl.load(peers_ptr + r, mask=r_in, other=0)
    k = tl.arange(0, K_BLOCK)
    k_in = k < K
    for t in range(pid, T, n_programs):
        t64 = tl.cast(t, tl.int64)
        ids = tl.load(ids_ptr + t64 * K + k, mask=k_in, other=0)
        w = tl.load(weights_ptr + t64 * K + k, mask=k_in, other=0.0)
        dest = _rank_for(ids, k_in, t, me, physical_ptr, copies_ptr, max_copies, slots_per_rank,
                         C_BLOCK)
        goes = (tl.max(((dest[None, :] == r[:, None]) & k_in[None, :]).to(tl.int32), axis=1) > 0)
        goes = goes & r_in
        slots = tl.atomic_add(send_counter_ptr + r, 1, mask=goes, sem="relaxed", scope="gpu")
        slots = tl.where(goes, slots, -1)
        tl.store(send_slot_ptr + t64 * R + r, slots, mask=r_in)
        rows = peers + (me * cap + slots).to(tl.int64) * row_bytes
        for g0 in range(0, tl.cdiv(H, 128), GROUPS):
            groups, cols, in_row = chunk_columns(g0, H, GROUPS)
            v = tl.load(x_ptr + t64 * H + cols, mask=in_row, other=0.0)
            data, scale = quantize_chunk(v, FP8)
            for d in range(0, R):
                if tl.sum(tl.where(r == d, slots, 0), axis=0) >= 0:
                    row = tl.sum(tl.where(r == d, rows, 0), axis=0).to(tl.pointer_type(tl.uint8))
                    store_chunk(row, data, scale, groups, cols, in_row, H, FP8)
        for d in range(0, R):
            if tl.sum(tl.where(r == d, slots, 0), axis=0) >= 0:
                row = tl.sum(tl.where(r == d, rows, 0), axis=0).to(tl.pointer_type(tl.uint8))
                store_meta(row, tl.where(dest == d, ids, E), w, k, k_in, ids_off, K)
    if tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="sys") == n_programs - 1:
        counts = tl.atomic_xchg(send_counter_ptr + r, 0, mask=r_in, sem="relaxed", scope="gpu")
        _raise_flags(peers, r_in, dflags_off, me, exchange, counts)
        tl.atomic_xchg(done_ptr, 0, sem="relaxed", scope="gpu")


@triton.jit
def ep_ll_dispatch_recv(buf_ptr, x_ptr, ids_out_ptr, weights_out_ptr, recv_count_ptr, epoch_ptr,
                        status_ptr, timeout_ns, R, cap, E, dflags_off, H, K, ids_off, row_bytes,
                        FP8: tl.constexpr, GROUPS: tl.constexpr, K_BLOCK: tl.constexpr,
                        R_BLOCK: tl.constexpr, TIMER: tl.constexpr):
    pid = tl.program_id(0)
    exchange = tl.load(epoch_ptr) + 1
    r = tl.arange(0, R_BLOCK)
    r_in = r < R
    flags = (buf_ptr + dflags_off).to(tl.pointer_type(tl.int64)) + r
    counts = _wait_flags(flags, r_in, exchange, timeout_ns, status_ptr, 1, TIMER, R_BLOCK)
    if pid == 0:
        tl.store(recv_count_ptr + r, counts, mask=r_in)
    k = tl.arange(0, K_BLOCK)
    k_in = k < K
    for j in range(pid, R * cap, tl.num_programs(0)):
        if j % cap < tl.sum(tl.where(r == j // cap, counts, 0), axis=0):
            copy_row_out(buf_ptr + tl.cast(j, tl.int64) * row_bytes, x_ptr, ids_out_ptr,
                         weights_out_ptr, j, H, K, ids_off, FP8, GROUPS, K_BLOCK)
        else:
            tl.store(ids_out_ptr + tl.cast(j, tl.int64) * K + k, tl.zeros([K_BLOCK], tl.int32) + E,
                     mask=k_in)
            tl.store(weights_out_ptr + tl.cast(j, tl.int64) * K + k, tl.zeros([K_BLOCK], tl.float32),
                     mask=k_in)


@triton.jit
def ep_ll_combine_send(expert_out_ptr, peers_ptr, me, R, cap, combine_off, cflags_off,
                       recv_count_ptr, done_ptr, epoch_ptr, H, BLOCK: tl.constexpr,
                       R_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    exchange = tl.load(epoch_ptr) + 1
    r = tl.arange(0, R_BLOCK)
    r_in = r < R
    peers = tl.load(peers_ptr + r, mask=r_in, other=0)
    counts = tl.load(recv_count_ptr + r, mask=r_in, other=0)
    cols = tl.arange(0, BLOCK)
    for j in range(pid, R * cap, n_programs):
        s = j // cap
        i = j % cap
        if i < tl.sum(tl.where(r == s, counts, 0), axis=0):
            peer = tl.sum(tl.where(r == s, peers, 0), axis=0)
            dst = (peer + combine_off + (me * cap + i).to(tl.int64) * H * 2).to(
                tl.pointer_type(tl.bfloat16))
            for c0 in range(0, H, BLOCK):
                in_row = c0 + cols < H
                v = tl.load(expert_out_ptr + tl.cast(j, tl.int64) * H + c0 + cols, mask=in_row)
                tl.store(dst + c0 + cols, v, mask=in_row)
    if tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="sys") == n_programs - 1:
        _raise_flags(peers, r_in, cflags_off, me, exchange, tl.zeros([R_BLOCK], tl.int32))
        tl.atomic_xchg(done_ptr, 0, sem="relaxed", scope="gpu")


@triton.jit
def ep_ll_combine_recv(buf_ptr, out_ptr, T, send_slot_ptr, R, cap, combine_off, cflags_off,
                       done_ptr, epoch_ptr, status_ptr, timeout_ns, H, BLOCK: tl.constexpr,
                       R_BLOCK: tl.constexpr, TIMER: tl.constexpr):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    exchange = tl.load(epoch_ptr) + 1
    r = tl.arange(0, R_BLOCK)
    r_in = r < R
    flags = (buf_ptr + cflags_off).to(tl.pointer_type(tl.int64)) + r
    _wait_flags(flags, r_in, exchange, timeout_ns, status_ptr, 2, TIMER, R_BLOCK)
    rows = (buf_ptr + combine_off).to(tl.pointer_type(tl.bfloat16))
    cols = tl.arange(0, BLOCK)
    for t in range(pid, T, n_programs):
        t64 = tl.cast(t, tl.int64)
        for c0 in range(0, H, BLOCK):
            in_row = c0 + cols < H
            acc = tl.zeros([BLOCK], tl.float32)
            for d in range(0, R):
                slot = tl.load(send_slot_ptr + t64 * R + d)
                if slot >= 0:
                    acc += tl.load(rows + (d * cap + slot).to(tl.int64) * H + c0 + cols,
                                   mask=in_row, other=0.0).to(tl.float32)
            tl.store(out_ptr + t64 * H + c0 + cols, acc.to(tl.bfloat16), mask=in_row)
    if tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="sys") == n_programs - 1:
        tl.store(epoch_ptr, exchange)
        tl.atomic_xchg(done_ptr, 0, sem="relaxed", scope="gpu")


def _variant(name, signature, constexprs, tags, divisible):
    return Variant(name=name, signature=signature, constexprs=constexprs, num_warps=4,
                   num_stages=1, divisible_by_16=divisible, tags=tags)


DISPATCH_SEND_SIGNATURE = {
    "x_ptr": "*bf16", "ids_ptr": "*i32", "weights_ptr": "*fp32", "T": "i32",
    "physical_ptr": "*i32", "copies_ptr": "*i32", "max_copies": "i32", "slots_per_rank": "i32",
    "E": "i32", "peers_ptr": "*i64", "me": "i32", "R": "i32", "cap": "i32", "dflags_off": "i64",
    "send_counter_ptr": "*i32", "send_slot_ptr": "*i32", "done_ptr": "*i32", "epoch_ptr": "*i64",
    "H": "i32", "K": "i32", "ids_off": "i32", "row_bytes": "i32", "FP8": "constexpr",
    "GROUPS": "constexpr", "K_BLOCK": "constexpr", "R_BLOCK": "constexpr", "C_BLOCK": "constexpr"}
DISPATCH_RECV_SIGNATURE = {
    "buf_ptr": "*u8", "x_ptr": "*bf16", "ids_out_ptr": "*i32", "weights_out_ptr": "*fp32",
    "recv_count_ptr": "*i32", "epoch_ptr": "*i64", "status_ptr": "*i32", "timeout_ns": "i64",
    "R": "i32", "cap": "i32", "E": "i32", "dflags_off": "i64", "H": "i32", "K": "i32",
    "ids_off": "i32", "row_bytes": "i32", "FP8": "constexpr", "GROUPS": "constexpr",
    "K_BLOCK": "constexpr", "R_BLOCK": "constexpr", "TIMER": "constexpr"}
COMBINE_SEND_SIGNATURE = {
    "expert_out_ptr": "*bf16", "peers_ptr": "*i64", "me": "i32", "R": "i32", "cap": "i32",
    "combine_off": "i64", "cflags_off": "i64", "recv_count_ptr": "*i32", "done_ptr": "*i32",
    "epoch_ptr": "*i64", "H": "i32", "BLOCK": "constexpr", "R_BLOCK": "constexpr"}
COMBINE_RECV_SIGNATURE = {
    "buf_ptr": "*u8", "out_ptr": "*bf16", "T": "i32", "send_slot_ptr": "*i32", "R": "i32",
    "cap": "i32", "combine_off": "i64", "cflags_off": "i64", "done_ptr": "*i32",
    "epoch_ptr": "*i64", "status_ptr": "*i32", "timeout_ns": "i64", "H": "i32",
    "BLOCK": "constexpr", "R_BLOCK": "constexpr", "TIMER": "constexpr"}


def _row_variants(signature, extra):
    return [_variant("fp8" if fp8 else "bf16", signature,
                     {"FP8": fp8, "GROUPS": GROUPS, "K_BLOCK": K_BLOCK, "R_BLOCK": R_BLOCK,
                      **extra}, {"FP8": fp8}, ("x_ptr", "H", "row_bytes"))
            for fp8 in (0, 1)]


KERNELS = [
    Kernel("ep_ll_dispatch_send", ep_ll_dispatch_send,
           _row_variants(DISPATCH_SEND_SIGNATURE, {"C_BLOCK": C_BLOCK}),
           "low-latency dispatch: tokens written into the receive buffers of their experts' ranks",
           min_arch=89),
    Kernel("ep_ll_dispatch_recv", ep_ll_dispatch_recv,
           _row_variants(DISPATCH_RECV_SIGNATURE, {"TIMER": 1}),
           "low-latency dispatch: waits for every rank, then unpacks the received rows",
           min_arch=89),
    Kernel("ep_ll_combine_send", ep_ll_combine_send, [
        _variant(f"b{COPY_BLOCK}", COMBINE_SEND_SIGNATURE,
                 {"BLOCK": COPY_BLOCK, "R_BLOCK": R_BLOCK}, {"BLOCK": COPY_BLOCK},
                 ("expert_out_ptr", "H"))
    ], "low-latency combine: expert outputs written back into their tokens' ranks"),
    Kernel("ep_ll_combine_recv", ep_ll_combine_recv, [
        _variant(f"b{COPY_BLOCK}", COMBINE_RECV_SIGNATURE,
                 {"BLOCK": COPY_BLOCK, "R_BLOCK": R_BLOCK, "TIMER": 1}, {"BLOCK": COPY_BLOCK},
                 ("out_ptr", "H"))
    ], "low-latency combine: waits for every rank, then sums each token's partials"),
]
