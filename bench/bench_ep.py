#!/usr/bin/env python3
"""Expert-parallel dispatch and combine: latency and bandwidth of both modes at DeepSeek-V3's
shapes (hidden 7168, top-8 of 256 experts, FP8 tokens with their scales out: 7456-byte rows;
bf16 expert sums back), beside NCCL's all_to_all_single moving the same bytes in the same run.
128 and 4096 tokens per rank; uniform routing, and skewed (every token to rank 0's experts).

    torchrun --standalone --nproc-per-node N bench/bench_ep.py --out DIR   (make bench-ep EP=N)

The kernels are kernels/ep_dispatch.py and kernels/ep_low_latency.py, the sources the engine's
ahead-of-time build compiles, run here through Triton's JIT. Normal mode: counts exchanged (and
read on the host, as the engine must to size the exchange), ep_pack, all_to_all_single, ep_unpack;
combine: all_to_all_single back, ep_combine. Low-latency mode: buffers shared across processes with
CUDA IPC (torch's), kernels writing straight into the peers' buffers; buffers sized to the batch.
Each figure is the median over iterations of the slowest rank, every iteration started together.
Bandwidth counts the bytes that leave each GPU for the others.

With one GPU (N = 1) nothing leaves the GPU: the table then shows what the kernels cost on their
own, and a last table compares ep_pack and ep_unpack with a device-to-device copy of the bytes
they read and write (the copy is their ceiling).
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.multiprocessing.reductions import reduce_tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "kernels"))
import ep_dispatch  # noqa: E402
import ep_low_latency as ll  # noqa: E402

H, K, E = 7168, 8, 256
FP8 = 1
GROUPS = (H + 127) // 128
IDS_OFF = H + 4 * GROUPS
ROW_BYTES = (IDS_OFF + 8 * K + 15) // 16 * 16


class Setup:
    """One rank's batch, its plan, and every buffer both modes need."""

    def __init__(self, T, skewed, rank, world, dev):
        self.T, self.rank, self.world = T, rank, world
        per = E // world
        self.experts_of = [list(range(r * per, (r + 1) * per)) for r in range(world)]
        g = torch.Generator().manual_seed(1234 + rank)
        self.x = torch.randn(T, H, generator=g).to(torch.bfloat16).to(dev)
        pool = torch.tensor(self.experts_of[0] if skewed else list(range(E)))
        ids = torch.stack([pool[torch.randperm(len(pool), generator=g)[:K]] for _ in range(T)])
        self.ids = ids.to(torch.int32).to(dev)
        self.w = torch.rand(T, K, generator=g).to(dev)
        ids_list = ids.tolist()
        dest = (ids // per).tolist()  # contiguous blocks, no copies: rank_for is the block
        rows = [(d, t, [ids_list[t][j] if dest[t][j] == d else E for j in range(K)])
                for d in range(world) for t in range(T) if d in dest[t]]
        self.send_counts = [sum(1 for d, _, _ in rows if d == r) for r in range(world)]
        self.send_token = torch.tensor([t for _, t, _ in rows], dtype=torch.int32, device=dev)
        self.send_ids = torch.tensor([i for _, _, i in rows], dtype=torch.int32, device=dev)
        self.n_out = len(rows)
        counts = torch.tensor(self.send_counts, dtype=torch.int64, device=dev)
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts)
        self.recv_counts = recv.tolist()
        self.n_in = sum(self.recv_counts)
        self.send_buf = torch.empty(max(self.n_out, 1) * ROW_BYTES, dtype=torch.uint8, device=dev)
        self.recv_buf = torch.empty(max(self.n_in, 1) * ROW_BYTES, dtype=torch.uint8, device=dev)
        self.x_in = torch.empty(max(self.n_in, 1), H, dtype=torch.bfloat16, device=dev)
        self.ids_in = torch.empty(max(self.n_in, 1), K, dtype=torch.int32, device=dev)
        self.w_in = torch.empty(max(self.n_in, 1), K, device=dev)
        self.y = torch.randn(max(self.n_in, 1), H, device=dev).to(torch.bfloat16)
        self.back = torch.empty(max(self.n_out, 1), H, dtype=torch.bfloat16, device=dev)
        self.out = torch.empty(T, H, dtype=torch.bfloat16, device=dev)
        row_of = torch.full((T, world), -1, dtype=torch.int32)
        for i, (d, t, _) in enumerate(rows):
            row_of[t, d] = i
        self.row_of = row_of.to(dev)
        self.bytes_out = sum(c for r, c in enumerate(self.send_counts) if r != rank) * ROW_BYTES
        self.bytes_back = sum(c for r, c in enumerate(self.recv_counts) if r != rank) * H * 2
        self.sms = torch.cuda.get_device_properties(dev).multi_processor_count
        self._setup_low_latency(dev)

    def _setup_low_latency(self, dev):
        R, cap = self.world, max(self.T, 1)
        self.cap = cap
        self.combine_off = R * cap * ROW_BYTES
        self.dflags_off = (self.combine_off + R * cap * H * 2 + 15) // 16 * 16
        self.cflags_off = self.dflags_off + 8 * R
        self.shared = torch.zeros(self.cflags_off + 8 * R, dtype=torch.uint8, device=dev)
        handles = [None] * R
        dist.all_gather_object(handles, reduce_tensor(self.shared))
        self.peer_views = [self.shared if r == self.rank else fn(*args)
                           for r, (fn, args) in enumerate(handles)]
        self.peers = torch.tensor([p.data_ptr() for p in self.peer_views], dtype=torch.int64,
                                  device=dev)
        phys = torch.tensor([[e] for e in range(E)], dtype=torch.int32)  # slot e: rank e // per
        self.phys, self.copies = phys.to(dev), torch.ones(E, dtype=torch.int32, device=dev)
        self.slots_per_rank = E // R

        def zeros(n, dtype):
            return torch.zeros(n, dtype=dtype, device=dev)

        self.send_counter, self.send_slot = zeros(ll.R_BLOCK, torch.int32), zeros(cap * R,
                                                                                  torch.int32)
        self.recv_count, self.done = zeros(R, torch.int32), zeros(1, torch.int32)
        self.epoch, self.status = zeros(1, torch.int64), zeros(1, torch.int32)
        self.ll_x = torch.zeros(R * cap, H, dtype=torch.bfloat16, device=dev)
        self.ll_ids = zeros(R * cap * K, torch.int32)
        self.ll_w = zeros(R * cap * K, torch.float32)
        self.ll_y = torch.randn(R * cap, H, device=dev).to(torch.bfloat16)

    def programs(self, n):
        return (max(1, min(n, self.sms)), )

    # --- the operations timed ---
    def nccl_dispatch(self):
        dist.all_to_all_single(self.recv_buf[:self.n_in * ROW_BYTES],
                               self.send_buf[:self.n_out * ROW_BYTES],
                               [c * ROW_BYTES for c in self.recv_counts],
                               [c * ROW_BYTES for c in self.send_counts])

    def nccl_combine(self):
        dist.all_to_all_single(self.back[:self.n_out], self.y[:self.n_in], self.send_counts,
                               self.recv_counts)

    def pack(self):
        if self.n_out:
            ep_dispatch.ep_pack[(self.n_out, )](self.x, self.send_token, self.send_ids, self.w,
                                                self.send_buf, H, K, IDS_OFF, ROW_BYTES, FP8=FP8,
                                                GROUPS=ep_dispatch.GROUPS,
                                                K_BLOCK=ep_dispatch.K_BLOCK)

    def unpack(self):
        if self.n_in:
            ep_dispatch.ep_unpack[(self.n_in, )](self.recv_buf, self.x_in, self.ids_in, self.w_in,
                                                 H, K, IDS_OFF, ROW_BYTES, FP8=FP8,
                                                 GROUPS=ep_dispatch.GROUPS,
                                                 K_BLOCK=ep_dispatch.K_BLOCK)

    def normal_dispatch(self):
        counts = torch.tensor(self.send_counts, dtype=torch.int64, device=self.x.device)
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts)
        recv.tolist()  # the sizes must reach the host before the exchange can be issued
        self.pack()
        self.nccl_dispatch()
        self.unpack()

    def normal_combine(self):
        self.nccl_combine()
        block = ep_dispatch.COMBINE_BLOCK
        ep_dispatch.ep_combine[(self.T, (H + block - 1) // block)](self.back, self.row_of,
                                                                  self.out, self.world, H,
                                                                  BLOCK=block)

    def ll_dispatch(self):
        R, cap = self.world, self.cap
        ll.ep_ll_dispatch_send[self.programs(self.T)](
            self.x, self.ids, self.w, self.T, self.phys, self.copies, 1, self.slots_per_rank, E,
            self.peers, self.rank, R, cap, self.dflags_off, self.send_counter, self.send_slot,
            self.done, self.epoch, H, K, IDS_OFF, ROW_BYTES, FP8=FP8, GROUPS=ll.GROUPS,
            K_BLOCK=ll.K_BLOCK, R_BLOCK=ll.R_BLOCK, C_BLOCK=ll.C_BLOCK)
        ll.ep_ll_dispatch_recv[self.programs(R * cap)](
            self.shared, self.ll_x, self.ll_ids, self.ll_w, self.recv_count, self.epoch,
            self.status, 20_000_000_000, R, cap, E, self.dflags_off, H, K, IDS_OFF, ROW_BYTES,
            FP8=FP8, GROUPS=ll.GROUPS, K_BLOCK=ll.K_BLOCK, R_BLOCK=ll.R_BLOCK, TIMER=1)

    def ll_combine(self):
        R, cap = self.world, self.cap
        ll.ep_ll_combine_send[self.programs(R * cap)](
            self.ll_y, self.peers, self.rank, R, cap, self.combine_off, self.cflags_off,
            self.recv_count, self.done, self.epoch, H, BLOCK=ll.COPY_BLOCK, R_BLOCK=ll.R_BLOCK)
        ll.ep_ll_combine_recv[self.programs(self.T)](
            self.shared, self.out, self.T, self.send_slot, R, cap, self.combine_off,
            self.cflags_off, self.done, self.epoch, self.status, 20_000_000_000, H,
            BLOCK=ll.COPY_BLOCK, R_BLOCK=ll.R_BLOCK, TIMER=1)


def time_us(fn, iters, warmup=3):
    """Median over iterations of the slowest rank's time, each iteration started together."""
    times = []
    for i in range(warmup + iters):
        dist.barrier()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        t = torch.tensor([start.elapsed_time(end) * 1000.0], device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if i >= warmup:
            times.append(t.item())
    return statistics.median(times)


def captured(fns):
    """Each of fns captured in a CUDA graph, or None unless every rank managed it. Graph replays
    leave out Python's launch costs (tens of µs a Triton launch), which the engine, launching
    ahead-of-time kernels from C++, does not pay."""
    graphs, ok = [], 1
    try:
        torch.cuda.synchronize()
        for fn in fns:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            graphs.append(g)
    except Exception as e:  # noqa: BLE001 - report and fall back to the eager figures
        print(f"rank {dist.get_rank()}: CUDA graph capture failed: {e}")
        ok = 0
    flag = torch.tensor([ok], device="cuda")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return graphs if flag.item() else None


def time_replays_us(graphs, iters, warmup=3):
    """Median per graph of the slowest rank's time, the graphs replayed back to back."""
    times = [[] for _ in graphs]
    for i in range(warmup + iters):
        dist.barrier()
        torch.cuda.synchronize()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(graphs) + 1)]
        events[0].record()
        for g, e in zip(graphs, events[1:]):
            g.replay()
            e.record()
        events[-1].synchronize()
        t = torch.tensor([a.elapsed_time(b) * 1000.0 for a, b in zip(events, events[1:])],
                         device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if i >= warmup:
            for j, v in enumerate(t.tolist()):
                times[j].append(v)
    return [statistics.median(t) for t in times]


def ll_exchange(s):
    """A low-latency dispatch then combine: the two must alternate (the epochs pair them)."""
    s.ll_dispatch()
    s.ll_combine()


def copy_ceiling_us(nbytes, dev):
    """A device-to-device copy reading and writing `nbytes` bytes in all (half each way)."""
    a = torch.empty(max(nbytes // 2, 16), dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    return time_us(lambda: b.copy_(a), 20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-ep-out"))
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    os.environ["NCCL_NVLS_ENABLE"] = "0"  # never NVLink multicast: it can take shared GPUs down
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda")
    rows, kernel_rows = [], []
    for T in (128, 4096):
        for skewed in (False, True):
            s = Setup(T, skewed, rank, world, dev)
            r = {"tokens": T, "routing": "skewed" if skewed else "uniform",
                 "bytes_out": s.bytes_out, "bytes_back": s.bytes_back,
                 "nccl_dispatch_us": time_us(s.nccl_dispatch, args.iters),
                 "normal_dispatch_us": time_us(s.normal_dispatch, args.iters),
                 "nccl_combine_us": time_us(s.nccl_combine, args.iters),
                 "normal_combine_us": time_us(s.normal_combine, args.iters)}
            # Low-latency: a dispatch and combine pair per iteration, then the dispatch alone
            # inside pairs (timed around it), so the epochs stay paired.
            pair = time_us(lambda: ll_exchange(s), args.iters)
            disp = []
            for _ in range(args.iters):
                dist.barrier()
                torch.cuda.synchronize()
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                s.ll_dispatch()
                e1.record()
                s.ll_combine()
                torch.cuda.synchronize()
                t = torch.tensor([e0.elapsed_time(e1) * 1000.0], device=dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                disp.append(t.item())
            r["ll_dispatch_us"] = statistics.median(disp)
            r["ll_combine_us"] = max(pair - r["ll_dispatch_us"], 0.0)
            graphs = captured([s.ll_dispatch, s.ll_combine])
            if graphs:
                r["ll_dispatch_graph_us"], r["ll_combine_graph_us"] = time_replays_us(
                    graphs, args.iters)
            r["ll_status"] = int(s.status.item())
            rows.append(r)
            if world == 1 and not skewed:
                read_pack = T * H * 2 + s.n_out * ROW_BYTES
                read_unpack = s.n_in * ROW_BYTES + s.n_in * (H * 2 + 8 * K)
                row = {"tokens": T,
                       "pack_us": time_us(s.pack, args.iters),
                       "pack_bytes": read_pack,
                       "unpack_us": time_us(s.unpack, args.iters),
                       "unpack_bytes": read_unpack,
                       "copy_pack_us": copy_ceiling_us(read_pack, dev),
                       "copy_unpack_us": copy_ceiling_us(read_unpack, dev)}
                copies = [torch.empty(max(n // 2, 16), dtype=torch.uint8, device=dev)
                          for n in (read_pack, read_pack, read_unpack, read_unpack)]
                graphs = captured([s.pack, s.unpack, lambda: copies[1].copy_(copies[0]),
                                   lambda: copies[3].copy_(copies[2])])
                if graphs:
                    for key in ("pack", "unpack", "copy_pack", "copy_unpack"):
                        row[key + "_us"] = time_replays_us([graphs.pop(0)], args.iters)[0]
                    row["timing"] = "graph replay"
                kernel_rows.append(row)
            dist.barrier()  # no rank unmaps a buffer a peer still writes to
            del s
    if rank == 0:
        report(rows, kernel_rows, world, args.out)
    dist.destroy_process_group()


def report(rows, kernel_rows, world, out):
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown"
    head = (f"EP {world} on {gpu}, commit {commit}, {datetime.date.today()}; µs per call, median "
            "of the slowest rank; GB/s = bytes leaving each GPU / time; low-latency timed as CUDA "
            "graph replays where every rank could capture them, the rest launched eagerly from "
            "Python")
    lines = [head, "",
             "| tokens/rank | routing | NCCL a2a dispatch bytes | normal dispatch | low-latency "
             "dispatch | NCCL a2a combine bytes | normal combine | low-latency combine |",
             "|---|---|---|---|---|---|---|---|"]

    def bw(nbytes, us):
        return f" ({nbytes / us / 1e3:.0f} GB/s)" if nbytes and us else ""

    for r in rows:
        if "ll_dispatch_graph_us" in r:  # the device's time, without Python's launches
            r["ll_dispatch_us"], r["ll_combine_us"] = r["ll_dispatch_graph_us"], r[
                "ll_combine_graph_us"]
        lines.append(
            f"| {r['tokens']} | {r['routing']} | {r['nccl_dispatch_us']:.1f}"
            f"{bw(r['bytes_out'], r['nccl_dispatch_us'])} | {r['normal_dispatch_us']:.1f}"
            f"{bw(r['bytes_out'], r['normal_dispatch_us'])} | {r['ll_dispatch_us']:.1f}"
            f"{bw(r['bytes_out'], r['ll_dispatch_us'])} | {r['nccl_combine_us']:.1f}"
            f"{bw(r['bytes_back'], r['nccl_combine_us'])} | {r['normal_combine_us']:.1f}"
            f"{bw(r['bytes_back'], r['normal_combine_us'])} | {r['ll_combine_us']:.1f}"
            f"{bw(r['bytes_back'], r['ll_combine_us'])} |")
    if kernel_rows:
        lines += ["", "| tokens | ep_pack | copy of its bytes | ratio | ep_unpack | copy of its "
                  "bytes | ratio |", "|---|---|---|---|---|---|---|"]
        for k in kernel_rows:
            lines.append(
                f"| {k['tokens']} | {k['pack_us']:.1f} µs ({k['pack_bytes'] / k['pack_us'] / 1e3:.0f}"
                f" GB/s) | {k['copy_pack_us']:.1f} µs | {k['copy_pack_us'] / k['pack_us']:.2f} | "
                f"{k['unpack_us']:.1f} µs ({k['unpack_bytes'] / k['unpack_us'] / 1e3:.0f} GB/s) | "
                f"{k['copy_unpack_us']:.1f} µs | {k['copy_unpack_us'] / k['unpack_us']:.2f} |")
    text = "\n".join(lines)
    (out / f"bench_ep_{world}.md").write_text(text + "\n")
    (out / f"bench_ep_{world}.json").write_text(json.dumps({"rows": rows,
                                                            "kernels": kernel_rows}, indent=1))
    if any(r["ll_status"] for r in rows):
        print("WARNING: a low-latency wait timed out (status set); those figures are void")
    print(text)


if __name__ == "__main__":
    main()
