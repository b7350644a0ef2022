#!/usr/bin/env python3
"""Kernel benchmark: Trident's CUDA kernels (through trident_kernel_bench, the library's own
launcher) against their peers and ceilings, all measured in one run on one GPU:

  FP8 block-scaled GEMM   vs torch._scaled_mm with 1x128 / 128x128 scales (cuBLAS), and
                          cuBLAS BF16 (torch.mm) on the same shape
  BF16 GEMM               vs cuBLAS BF16
  act_quant, RMSNorm      vs torch eager, and the copy-bandwidth floor
  MLA decode              against the copy bandwidth (the target: 90% of it) and the floor
  grouped expert GEMMs    FP8 gate/up (SiLU-mul and quantization fused) and down over many experts,
                          prefill and decode layouts, beside the dense FP8 GEMM (ours) and
                          scaled_mm at the same M x N x K; and the whole moe_experts op

Ceilings measured here: device-to-device copy bandwidth (bytes read + written) and the BF16
matrix rate (8192^3). The floor of a case is max(bytes / copy bandwidth, FLOPs / peak), with the
datasheet dense peak for FP8 (1979 TFLOPS) and the measured one for BF16.

--sweep also times every compiled GEMM tile per M bucket and writes the best as a tuned table,
<out>/tuned_sm<arch>.json, in the format of kernels/tuned/sm<arch>.json. Results are printed
and appended to --results.
"""
import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

FP8_PEAK_TFLOPS = 1979.0  # H100/H200 SXM dense FP8, datasheet
ROTATE_BYTES = 512 << 20
MAX_COPIES = 16

# DeepSeek-V3's linear layers (N, K).
DEEPSEEK_SHAPES = [
    ("q_a", 1536, 7168),
    ("q_b", 24576, 1536),
    ("kv_a", 576, 7168),
    ("o_proj", 7168, 16384),
    ("dense up", 18432, 7168),
    ("dense down", 7168, 18432),
    ("expert gate+up", 4096, 7168),
    ("expert down", 7168, 2048),
]
BENCH_M = [16, 64, 128, 256, 2048, 8192]
SWEEP_M = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
SWEEP_SHAPES = [(7168, 2048), (24576, 1536), (4096, 7168), (1536, 7168)]


def time_cuda(fn, copies):
    """Median and min microseconds of fn(copy) over per-launch CUDA events, after warm-up."""
    for i in range(3):
        fn(i % copies)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(0)
    stop.record()
    stop.synchronize()
    iters = max(10, min(300, int(30.0 / max(start.elapsed_time(stop), 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iters)]
    for i, (a, b) in enumerate(events):
        a.record()
        fn(i % copies)
        b.record()
    torch.cuda.synchronize()
    us = sorted(a.elapsed_time(b) * 1e3 for a, b in events)
    return statistics.median(us), us[0]


def copies_for(nbytes):
    return max(1, min(MAX_COPIES, ROTATE_BYTES // max(nbytes, 1)))


def measure_ceilings():
    n = 1 << 30  # 1 GiB each way
    src = torch.randint(0, 255, (n, ), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_us, _ = time_cuda(lambda _: dst.copy_(src), 1)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_us, _ = time_cuda(lambda _: torch.mm(a, b), 1)
    return {"copy_gbps": 2 * n / copy_us * 1e-3, "bf16_tflops": 2 * 8192**3 / mm_us * 1e-6}


def run_trident(binary, cases):
    """Runs trident_kernel_bench on the case lines; returns its JSON records."""
    proc = subprocess.run([binary], input="\n".join(cases) + "\n", capture_output=True, text=True)
    print(proc.stderr.strip(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{binary} failed ({proc.returncode}): {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def peer_scaled_mm(M, N, K):
    """torch._scaled_mm, DeepSeek block scales: a 1x128 (outer-dim-major), b 128x128."""
    kb, nb = K // 128, (N + 127) // 128
    copies = copies_for(M * K + N * K)
    a = [torch.randn(M, K, device="cuda").to(torch.float8_e4m3fn) for _ in range(copies)]
    b = [torch.randn(N, K, device="cuda").to(torch.float8_e4m3fn) for _ in range(copies)]
    sa = [torch.rand(kb, M, device="cuda").add_(0.5).div_(448).t() for _ in range(copies)]
    sb = [torch.rand(nb, kb, device="cuda").add_(0.5).div_(448) for _ in range(copies)]
    fn = lambda c: torch._scaled_mm(a[c], b[c].t(), sa[c], sb[c].t(), out_dtype=torch.bfloat16)
    return time_cuda(fn, copies)


def peer_bf16_mm(M, N, K):
    copies = copies_for(2 * (M * K + N * K))
    a = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    b = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    return time_cuda(lambda c: torch.mm(a[c], b[c].t()), copies)


def peer_act_quant(M, K):
    copies = copies_for(3 * M * K)
    xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]

    def quant(c):
        x = xs[c].float().view(M, K // 128, 128)
        s = x.abs().amax(-1, keepdim=True).clamp_min(1e-10) / 448.0
        return (x / s).to(torch.float8_e4m3fn), s

    return time_cuda(quant, copies)


def peer_rms_norm(M, N, residual):
    copies = copies_for(M * N * (8 if residual else 4))
    xs = [torch.randn(M, N, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    rs = [torch.randn(M, N, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16)

    def norm(c):
        v = xs[c]
        if residual:
            rs[c].add_(v)
            v = rs[c]
        return torch.nn.functional.rms_norm(v, (N, ), w, 1e-6)

    return time_cuda(norm, copies)


def guarded(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # a peer that cannot run this shape is reported, not fatal
        print(f"peer {fn.__name__}{args} failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return None


def gemm_floor_us(M, N, K, bytes_per_elem, peak_tflops, ceil):
    nbytes = (M * K + N * K) * bytes_per_elem + M * N * 2
    return max(nbytes / (ceil["copy_gbps"] * 1e3), 2 * M * N * K / (peak_tflops * 1e6))


def fmt_us(t):
    return "n/a" if t is None else f"{t:.1f}"


def tflops(M, N, K, us):
    return "n/a" if us is None else f"{2 * M * N * K / us * 1e-6:.0f}"


def ratio(a, b):
    return "n/a" if a is None or b is None else f"{b / a:.2f}"


def gemm_tables(records, ceil, peers):
    """Our default choice per shape (sweep records excluded) against the peers; the peers'
    times go into `peers` for the JSON record."""
    ours = {(r["op"], r["M"], r["N"], r["K"]): r for r in records
            if r["op"].endswith("gemm") and not r.get("sweep")}
    lines = [
        "| layer | M | N | K | floor µs | ours FP8 µs | TFLOPS | % of floor | tile, split | "
        "scaled_mm µs | ours vs scaled_mm | cuBLAS BF16 µs | ours BF16 µs | "
        "ours BF16 vs cuBLAS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, N, K in DEEPSEEK_SHAPES:
        for M in BENCH_M:
            r, rb = ours.get(("fp8_gemm", M, N, K)), ours.get(("bf16_gemm", M, N, K))
            if r is None:
                continue
            floor = gemm_floor_us(M, N, K, 1, FP8_PEAK_TFLOPS, ceil)
            sm = guarded(peer_scaled_mm, M, N, K)
            bf = guarded(peer_bf16_mm, M, N, K)
            sm_us, bf_us = sm and sm[0], bf and bf[0]
            peers.append({"M": M, "N": N, "K": K, "scaled_mm_us": sm_us, "cublas_bf16_us": bf_us,
                          "fp8_floor_us": floor})
            ob_us = rb["us"] if rb else None
            lines.append(
                f"| {name} | {M} | {N} | {K} | {floor:.1f} | {r['us']:.1f} | "
                f"{tflops(M, N, K, r['us'])} | {100 * floor / r['us']:.0f}% | "
                f"{r['tile']}, {r['split']} | {fmt_us(sm_us)} | {ratio(r['us'], sm_us)} | "
                f"{fmt_us(bf_us)} | {fmt_us(ob_us)} | {ratio(ob_us, bf_us)} |")
            print(lines[-1], flush=True)
    return lines


def memory_tables(records, ceil, peers):
    lines = ["| op | M | N or K | bytes | floor µs | ours µs | GB/s | % of floor | "
             "torch eager µs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["op"] not in ("act_quant", "rms_norm", "add_rms_norm"):
            continue
        width = r.get("K", r.get("N"))
        floor = r["bytes"] / (ceil["copy_gbps"] * 1e3)
        if r["op"] == "act_quant":
            peer = guarded(peer_act_quant, r["M"], width)
        else:
            peer = guarded(peer_rms_norm, r["M"], width, r["op"] == "add_rms_norm")
        peers.append({"op": r["op"], "M": r["M"], "width": width,
                      "torch_eager_us": peer and peer[0], "floor_us": floor})
        lines.append(f"| {r['op']} | {r['M']} | {width} | {r['bytes']:.0f} | {floor:.1f} | "
                     f"{r['us']:.1f} | {r['gbps']:.0f} | {100 * floor / r['us']:.0f}% | "
                     f"{fmt_us(peer and peer[0])} |")
        print(lines[-1], flush=True)
    return lines


# MLA decode at DeepSeek-V3's shapes: batch x context (cache bytes up to ~10 GB), then context
# splits other than the chosen ones on a few of them.
MLA_HEADS = 128
MLA_BATCH = [1, 4, 16, 64, 128, 256]
MLA_CONTEXT = [1024, 4096, 16384, 32768]
MLA_MAX_TOKENS = 256 * 32768
MLA_SPLIT_CASES = [(1, 32768, s) for s in (16, 32)] + [(16, 16384, s) for s in (2, 8)]
# The 64-head DeepSeek tile at each compiled L2 prefetch distance (kernels/mla_attention.py
# PREFETCH_512; none, the reference, is ""), forced, with the splits chosen as for the default,
# on a few shapes.
MLA_TILE = "l512r64_h64n64_w8s2"
MLA_SCHEDULES = ["_pf1", ""]
MLA_SCHEDULE_SHAPES = [(1, 32768), (16, 16384), (64, 4096), (128, 32768), (256, 4096)]


def mla_cases():
    cases = [f"mla_decode {B} {ctx} {MLA_HEADS}" for B in MLA_BATCH for ctx in MLA_CONTEXT
             if B * ctx <= MLA_MAX_TOKENS]
    cases += [f"mla_decode {B} {ctx} {MLA_HEADS} auto {s}" for B, ctx, s in MLA_SPLIT_CASES]
    cases += [f"mla_decode {B} {ctx} {MLA_HEADS} {MLA_TILE}{s} 0" for s in MLA_SCHEDULES
              for B, ctx in MLA_SCHEDULE_SHAPES]
    return cases


def mla_prefetch_table(records):
    """µs of the whole op per forced variant of the DeepSeek tile (rows) and shape (columns)."""
    forced = {(r["variant"], r["B"], r["context"]): r for r in records
              if r["op"] == "mla_decode" and r.get("forced")}
    lines = ["| variant | " + " | ".join(f"B {B}, {ctx}" for B, ctx in MLA_SCHEDULE_SHAPES) + " |",
             "|---|" + "---|" * len(MLA_SCHEDULE_SHAPES)]
    for s in MLA_SCHEDULES:
        cells = []
        for B, ctx in MLA_SCHEDULE_SHAPES:
            r = forced.get((MLA_TILE + s, B, ctx))
            cells.append(f"{r['us']:.1f} ({r['splits']})" if r else "-")
        lines.append(f"| {MLA_TILE}{s} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def mla_table(records, ceil):
    """MLA decode: bytes the op must move (latent rows of every context, w_uk and w_uv, q in, out
    out) over the time, against the copy bandwidth; the floor is max(bytes / copy bandwidth,
    FLOPs / cuBLAS BF16 rate)."""
    lines = ["| B | context | MB moved | GFLOP | floor µs (bytes, FLOPs) | ours µs | GB/s | "
             "vs copy | TFLOPS | % of floor | variant, splits |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["op"] != "mla_decode" or r.get("forced"):
            continue
        mem_us = r["bytes"] / (ceil["copy_gbps"] * 1e3)
        flop_us = r["flops"] / (ceil["bf16_tflops"] * 1e6)
        floor = max(mem_us, flop_us)
        lines.append(
            f"| {r['B']} | {r['context']} | {r['bytes'] / 1e6:.1f} | {r['flops'] / 1e9:.0f} | "
            f"{mem_us:.1f}, {flop_us:.1f} | {r['us']:.1f} | {r['gbps']:.0f} | "
            f"{r['gbps'] / ceil['copy_gbps']:.2f} | {r['tflops']:.0f} | "
            f"{100 * floor / r['us']:.0f}% | {r['variant']}, {r['splits']} |")
        print(lines[-1], flush=True)
    return lines


# Grouped FP8 expert GEMMs at DeepSeek-V3's expert shapes, as (layout, local experts, rows per
# expert): prefill on an expert-parallel rank of 8 (32 of the 256 experts; 8192 or 4096 tokens
# per rank routed 8 ways) and on one GPU holding all 256 (2048 tokens); decode with a few rows
# per expert. The whole op on one GPU at 1 to 2048 tokens.
MOE_HIDDEN, MOE_INTER = 7168, 2048
MOE_LAYOUTS = [("prefill", 32, 2048), ("prefill", 32, 1024), ("decode", 32, 32),
               ("decode", 32, 8), ("prefill", 256, 64), ("decode", 256, 4), ("decode", 256, 1)]
MOE_TOKENS = [1, 32, 128, 2048, 8192]
MOE_OPS = {"moe_gate_up": (2 * MOE_INTER, MOE_HIDDEN), "moe_down": (MOE_HIDDEN, MOE_INTER)}


def moe_cases(sweep):
    """Cases grouped by expert count, so each set of expert weights is uploaded once."""
    cases = []
    for _, E, M in MOE_LAYOUTS:
        for op, (N, K) in MOE_OPS.items():
            cases.append(f"fp8_gemm {E * M} {N} {K}")
            cases.append(f"{op} {E} {M} {MOE_HIDDEN} {MOE_INTER} auto")
            if sweep:
                cases.append(f"{op} {E} {M} {MOE_HIDDEN} {MOE_INTER} all")
    cases += [f"moe_experts {T} 256 8 {MOE_HIDDEN} {MOE_INTER}" for T in MOE_TOKENS]
    # Even routing beside random: how much uneven expert loads cost.
    cases += [f"moe_experts {T} 256 8 {MOE_HIDDEN} {MOE_INTER} uniform" for T in MOE_TOKENS[-2:]]
    return cases


def moe_tables(records, ceil, peers):
    """The grouped GEMMs against their floor, our dense FP8 GEMM and scaled_mm at the same
    M x N x K (one weight instead of E); the best swept variant; the whole op."""
    lines = ["| layout | experts × rows | op (N × K) | floor µs | ours µs | TFLOPS | % of floor | "
             "variant | best swept (TFLOPS) | dense ours TFLOPS | scaled_mm TFLOPS | "
             "ours vs scaled_mm |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    dense = {(r["M"], r["N"], r["K"]): r for r in records if r["op"] == "fp8_gemm"}
    sweeps = []
    for layout, E, M in MOE_LAYOUTS:
        for op, (N, K) in MOE_OPS.items():
            mine = [r for r in records if r["op"] == op and r["E"] == E and r["M"] == M]
            auto = next((r for r in mine if not r["sweep"]), None)
            if auto is None:
                continue
            swept = sorted((r for r in mine if r["sweep"]), key=lambda r: -r["tflops"])
            best = f"{swept[0]['variant']} ({swept[0]['tflops']:.0f})" if swept else "-"
            floor = max(auto["bytes"] / (ceil["copy_gbps"] * 1e3),
                        auto["flops"] / (FP8_PEAK_TFLOPS * 1e6))
            d = dense.get((E * M, N, K))
            sm = guarded(peer_scaled_mm, E * M, N, K)
            sm_us = sm and sm[0]
            peers.append({"op": op, "E": E, "M": M, "scaled_mm_us": sm_us, "floor_us": floor})
            lines.append(
                f"| {layout} | {E} × {M} | {op.removeprefix('moe_')} ({N} × {K}) | {floor:.1f} | "
                f"{auto['us']:.1f} | {auto['tflops']:.0f} | {100 * floor / auto['us']:.0f}% | "
                f"{auto['variant']} | {best} | {d['tflops'] if d else 'n/a'} | "
                f"{tflops(E * M, N, K, sm_us)} | {ratio(auto['us'], sm_us)} |")
            print(lines[-1], flush=True)
            if swept:
                sweeps.append(f"- {layout} {E} × {M}, {op.removeprefix('moe_')}: " + ", ".join(
                    f"{r['variant']} {r['tflops']:.0f}" for r in swept))
    lines += ["", "| tokens | experts, top-k | routing | µs | TFLOPS | variants |",
              "|---|---|---|---|---|---|"]
    for r in records:
        if r["op"] == "moe_experts":
            lines.append(f"| {r['T']} | {r['E']}, {r['top_k']} | {r['routing']} | "
                         f"{r['us']:.1f} | {r['tflops']:.0f} | {r['variant']} |")
            print(lines[-1], flush=True)
    if sweeps:
        lines += ["", "Every variant, TFLOPS, best first:", ""] + sweeps
    return lines


def sweep_table(records, kernel):
    """Best tile per M bucket by the geometric mean of TFLOPS over the sweep shapes."""
    by_m = {}
    for r in records:
        if r["op"] == kernel and r.get("sweep"):
            by_m.setdefault(r["M"], {}).setdefault(r["tile"], []).append(r["tflops"])
    buckets, lines = [], [f"| {kernel} M | best tile | geo-mean TFLOPS | runner-up |",
                          "|---|---|---|---|"]
    for M in sorted(by_m):
        scores = sorted(((math.exp(sum(math.log(max(t, 1e-3)) for t in v) / len(v)), tile)
                         for tile, v in by_m[M].items() if len(v) == len(SWEEP_SHAPES)),
                        reverse=True)
        if not scores:
            continue
        best = scores[0]
        second = scores[1] if len(scores) > 1 else (0, "-")
        lines.append(f"| {M} | {best[1]} | {best[0]:.0f} | {second[1]} ({second[0]:.0f}) |")
        if buckets and buckets[-1]["variant"] == best[1]:
            buckets[-1]["max_m"] = M
        else:
            buckets.append({"max_m": M, "variant": best[1]})
    if buckets:
        buckets[-1]["max_m"] = None
    return lines, buckets


def tuned_table_json(tuned, gpu, date):
    """kernels/tuned/sm<arch>.json, one bucket a line."""
    comment = ("GEMM tile per M bucket: the first bucket with M <= max_m wins (max_m null: any "
               "M). Names are variants without their _bf16/_fp32 output suffix. Chosen by "
               f"bench/bench_kernels.py --sweep on {gpu}, {date}; see bench/RESULTS.md.")
    out = ["{", f'  "_comment": {json.dumps(comment)},']
    for i, (kernel, buckets) in enumerate(tuned.items()):
        out.append(f'  "{kernel}": [')
        out += [f"    {json.dumps(b)}{',' if j < len(buckets) - 1 else ''}"
                for j, b in enumerate(buckets)]
        out.append("  ]" + ("," if i < len(tuned) - 1 else ""))
    return "\n".join(out + ["}"]) + "\n"


def commit_label():
    if os.environ.get("TRIDENT_COMMIT"):
        return os.environ["TRIDENT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                               text=True).stdout.strip()
        return head + (" + uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-binary", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for logs and tables")
    parser.add_argument("--results", type=Path, help="markdown file to append the tables to")
    parser.add_argument("--sweep", action="store_true", help="also time every GEMM tile")
    parser.add_argument("--only", choices=["mla", "moe"], help="time only these kernels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    gpu = torch.cuda.get_device_name(0)
    arch = "".join(map(str, torch.cuda.get_device_capability(0)))
    date = datetime.date.today().isoformat()
    ceil = measure_ceilings()
    print(f"{gpu}: copy {ceil['copy_gbps']:.0f} GB/s, bf16 mm {ceil['bf16_tflops']:.0f} TFLOPS",
          flush=True)

    cases = []
    if args.only is None:
        cases += [f"{op} {M} {N} {K}" for op in ("fp8_gemm", "bf16_gemm")
                  for _, N, K in DEEPSEEK_SHAPES for M in BENCH_M]
        cases += [f"act_quant {M} {K}" for M in (16, 2048, 8192) for K in (7168, 2048)]
        cases += [f"rms_norm {M} 7168 {res}" for M in (16, 2048, 8192) for res in (0, 1)]
    if args.only in (None, "mla"):
        cases += mla_cases()
    # Each case above prints one record; a sweep case prints one per tile.
    n_single = len(cases)
    if args.sweep and args.only is None:
        cases += [f"{op} {M} {N} {K} all" for op in ("fp8_gemm", "bf16_gemm")
                  for N, K in SWEEP_SHAPES for M in SWEEP_M]
    records = run_trident(args.bench_binary, cases) if cases else []
    for r in records[n_single:]:
        r["sweep"] = True
    # One record per case line: mark the MLA cases that force a variant of the DeepSeek tile.
    for case, r in zip(cases[:n_single], records[:n_single]):
        r["forced"] = case.startswith("mla_decode") and MLA_TILE in case
    # A run of their own: their records say themselves whether they are sweeps.
    moe_records = []
    if args.only in (None, "moe"):
        moe_records = run_trident(args.bench_binary, moe_cases(args.sweep))

    report = [f"## Kernels on {gpu}, {date}, commit {commit_label()}", "",
              f"Ceilings measured in this run: device-to-device copy {ceil['copy_gbps']:.0f} GB/s "
              f"(read + written), cuBLAS BF16 8192³ {ceil['bf16_tflops']:.0f} TFLOPS; FP8 peak "
              f"{FP8_PEAK_TFLOPS:.0f} TFLOPS (datasheet). Floor = max(bytes / copy bandwidth, "
              "FLOPs / peak). Times are medians of per-launch CUDA events over inputs rotated "
              "past the L2; ours through the library's launcher (trident_kernel_bench), peers "
              "through torch 2.11 in the same run. 'vs' columns: peer time / our time "
              "(> 1: ours faster). FP8 GEMM times exclude activation quantization (act_quant "
              "below).", ""]
    peers = []
    if args.only is None:
        report += ["### FP8 block-scaled GEMM (and BF16 GEMM) at DeepSeek-V3 shapes", ""]
        report += gemm_tables(records, ceil, peers) + [""]
        report += ["### Memory-bound kernels", ""]
        report += memory_tables(records, ceil, peers) + [""]
    if args.only in (None, "mla"):
        report += [f"### MLA decode, DeepSeek-V3 ({MLA_HEADS} heads, kv_lora 512, rope 64), the "
                   "whole op (absorb, attend, combine, absorb)", ""]
        report += mla_table(records, ceil) + [""]
        report += ["The 64-head tile with and without the L2 prefetch, forced (µs of the whole op; "
                   "splits):", ""]
        report += mla_prefetch_table(records) + [""]
    if args.only in (None, "moe"):
        report += [f"### Grouped FP8 expert GEMMs, DeepSeek-V3 experts (hidden {MOE_HIDDEN}, "
                   f"intermediate {MOE_INTER}), and the whole moe_experts op", ""]
        report += moe_tables(moe_records, ceil, peers) + [""]
    (args.out / "kernel_bench.json").write_text(
        json.dumps({"gpu": gpu, "ceilings": ceil, "ours": records + moe_records, "peers": peers},
                   indent=1))
    if args.sweep and args.only is None:
        tuned = {}
        for kernel in ("fp8_gemm", "bf16_gemm"):
            lines, tuned[kernel] = sweep_table([r for r in records if r.get("sweep")], kernel)
            report += [f"### Tile sweep, {kernel} (shapes N×K: "
                       f"{', '.join(f'{n}×{k}' for n, k in SWEEP_SHAPES)})", ""] + lines + [""]
            print("\n".join(lines), flush=True)
        (args.out / f"tuned_sm{arch}.json").write_text(tuned_table_json(tuned, gpu, date))
    text = "\n".join(report) + "\n"
    (args.out / "RESULTS_section.md").write_text(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
