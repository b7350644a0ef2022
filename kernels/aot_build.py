#!/usr/bin/env python3
"""Compiles every Triton kernel variant for each GPU target ahead of time, with no GPU needed, and
writes the C++ that embeds them into the library:

  <out>/trident_kernels.h    typed launch wrappers, one per kernel
  <out>/trident_kernels.cpp  the variant table (cubin, entry point, warps, shared memory, scratch
                             sizes, divisibility assumptions, tags), the tuned dispatch tables and
                             the wrappers' bodies
  <out>/cubin/*.cubin        the cubins, pulled into the object file with .incbin

Each variant is cached in <cache> under a hash of its kernel's source (with the Triton functions it
calls), signature, constexprs, options, target, Triton version and ptxas version, so a rebuild only
recompiles what changed. Run by CMake (cmake/kernels.cmake); needs triton==3.6.0.
"""
import argparse
import concurrent.futures
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(KERNELS_DIR))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from variant import SCALAR_C_TYPES  # noqa: E402

# Every kernels/*.py that defines KERNELS is a kernel module; these are build helpers.
NOT_KERNEL_MODULES = {"aot_build", "variant", "gemm_tiles"}
REQUIRED_TRITON = "3.6."
# Bump when what is cached, or how it is read, changes.
CACHE_FORMAT = 1
TMEM_COLUMNS = 512
METADATA_FIELDS = ["name", "num_warps", "num_ctas", "shared", "global_scratch_size",
                   "global_scratch_align", "profile_scratch_size", "profile_scratch_align",
                   "launch_cooperative_grid", "launch_pdl", "tmem_size"]


class StandInDriver:
    """Stands in for triton.runtime.driver.active: compiling for an explicit target must not
    touch a GPU or the CUDA driver, so any use of it is a bug this build reports."""

    def __getattr__(self, name):
        raise RuntimeError(f"the ahead-of-time kernel build used triton's GPU driver ({name}); "
                           "every compile must name its target")


def kernel_modules():
    """The kernel modules, in a fixed order so variant indices agree across worker processes."""
    names = sorted(p.stem for p in KERNELS_DIR.glob("*.py") if p.stem not in NOT_KERNEL_MODULES)
    return [m for m in (importlib.import_module(n) for n in names) if hasattr(m, "KERNELS")]


def load_kernels():
    kernels = []
    for module in kernel_modules():
        kernels += module.KERNELS
    return kernels


def validate(kernels):
    names = [k.name for k in kernels]
    if len(set(names)) != len(names):
        raise SystemExit(f"kernel names repeat: {names}")
    for kernel in kernels:
        args = kernel.launch_args()
        variant_names = set()
        for v in kernel.variants:
            if v.name in variant_names:
                raise SystemExit(f"{kernel.name}: variant name {v.name} repeats")
            variant_names.add(v.name)
            if not v.name.replace("_", "").isalnum():
                raise SystemExit(f"{kernel.name}: variant name {v.name!r} must be [a-z0-9_]")
            mine = [(a, t) for a, t in v.signature.items() if t != "constexpr"]
            if [a for a, _ in mine] != [a for a, _ in args] or any(
                    (t[0] == "*") != (u[0] == "*") or (t[0] != "*" and t != u)
                    for (_, t), (_, u) in zip(mine, args)):
                raise SystemExit(f"{kernel.name}/{v.name}: run-time arguments {mine} differ from "
                                 f"the kernel's {args}; variants may only change pointer dtypes")
            for a, t in args:
                if t[0] != "*" and t not in SCALAR_C_TYPES:
                    raise SystemExit(f"{kernel.name}: argument {a} has type {t}, which the "
                                     f"launcher cannot pass (known: {sorted(SCALAR_C_TYPES)})")
            for a in v.divisible_by_16:
                if a not in dict(args) or dict(args)[a] == "fp32":
                    raise SystemExit(f"{kernel.name}/{v.name}: divisible_by_16 names {a}, which "
                                     "is not a pointer or integer run-time argument")
            if list(v.constexprs) != [a for a, t in v.signature.items() if t == "constexpr"]:
                raise SystemExit(f"{kernel.name}/{v.name}: constexprs {list(v.constexprs)} do not "
                                 "match the signature's constexpr arguments")


def ptxas_version(arch):
    """The version line of the ptxas Triton uses for this target (its bundled one by default)."""
    from triton.backends.nvidia.compiler import get_ptxas_version
    return get_ptxas_version(arch).strip().splitlines()[-1]


def cache_key(kernel, variant, arch, ptxas):
    material = {
        "format": CACHE_FORMAT,
        "triton": triton.__version__,
        "ptxas": ptxas,
        "kernel": kernel.name,
        "source": kernel.fn.cache_key,
        "signature": variant.signature,
        "constexprs": {k: repr(v) for k, v in variant.constexprs.items()},
        "options": variant.options(),
        "divisible_by_16": sorted(variant.divisible_by_16),
        "arch": arch,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def kernel_archs(kernel, archs):
    """The targets a kernel is built for: those of `archs` it supports."""
    return [a for a in archs if a >= kernel.min_arch]


def compile_variant(job):
    """Runs in a worker process: compiles one variant, returns (key, cubin, metadata)."""
    kernel_index, variant_index, arch, key = job
    triton.runtime.driver.set_active(StandInDriver())
    kernel = load_kernels()[kernel_index]
    v = kernel.variants[variant_index]
    arg_names = list(v.signature)
    attrs = {(arg_names.index(a), ): [["tt.divisibility", 16]] for a in v.divisible_by_16}
    src = ASTSource(kernel.fn, v.signature, v.constexprs, attrs)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=v.options())
    except Exception as e:
        raise RuntimeError(f"compiling {kernel.name}/{v.name} for sm_{arch} failed: {e}") from e
    md = compiled.metadata._asdict()
    metadata = {f: md.get(f) for f in METADATA_FIELDS}
    return key, compiled.asm["cubin"], metadata


def check_metadata(label, md):
    # The launcher handles clusters (num_ctas) and scratch; these it does not.
    if md["launch_cooperative_grid"] or md["launch_pdl"]:
        raise SystemExit(f"{label}: cooperative or programmatic-dependent launch is not supported "
                         "by the launcher (src/backend/cuda/kernel_launch.cpp)")
    # Tensor memory (sm_100) is allocated by the kernel itself; it only has to fit.
    if (md.get("tmem_size") or 0) > TMEM_COLUMNS:
        raise SystemExit(f"{label}: needs {md['tmem_size']} tensor memory columns, the GPU has "
                         f"{TMEM_COLUMNS}")


def compile_all(kernels, archs, cache_dir, jobs):
    ptxas = {arch: ptxas_version(arch) for arch in archs}
    cache_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    todo = []
    for ki, kernel in enumerate(kernels):
        for vi, v in enumerate(kernel.variants):
            for arch in kernel_archs(kernel, archs):
                key = cache_key(kernel, v, arch, ptxas[arch])
                cubin, meta = cache_dir / f"{key}.cubin", cache_dir / f"{key}.json"
                if cubin.exists() and meta.exists():
                    results[(kernel.name, v.name, arch)] = (key, cubin.read_bytes(),
                                                            json.loads(meta.read_text()))
                else:
                    todo.append(((ki, vi, arch, key), (kernel.name, v.name, arch)))
    print(f"kernels: {len(results)} variants cached, {len(todo)} to compile "
          f"(sm_{', sm_'.join(map(str, archs))}, triton {triton.__version__}, "
          f"{'; '.join(sorted(set(ptxas.values())))})")
    if todo:
        # Triton's own cache is only scratch space here; ours is keyed by what matters.
        os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton-work")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(compile_variant, job): ident for job, ident in todo}
            for future in concurrent.futures.as_completed(futures):
                key, cubin, meta = future.result()
                ident = futures[future]
                # Write-then-rename so an interrupted build never leaves a half cache entry.
                for suffix, data in ((".cubin", cubin), (".json", json.dumps(meta).encode())):
                    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as f:
                        f.write(data)
                    os.replace(f.name, cache_dir / f"{key}{suffix}")
                results[ident] = (key, cubin, meta)
                print(f"  compiled {ident[0]}/{ident[1]} sm_{ident[2]}: "
                      f"{len(cubin)} bytes, {meta['shared']} bytes shared")
        shutil.rmtree(cache_dir / "triton-work", ignore_errors=True)
    for ident, (_, _, meta) in results.items():
        check_metadata(f"{ident[0]}/{ident[1]} sm_{ident[2]}", meta)
    return results


def load_tuned(tuned_dir, archs, kernels):
    """Per arch, per kernel: [(max_m or -1 for no bound, variant base name)], from
    kernels/tuned/sm<arch>.json. A base name is a variant name without its _<out dtype> suffix."""
    by_kernel = {k.name: {v.name for v in k.variants} for k in kernels}
    tables = {}
    for arch in archs:
        path = tuned_dir / f"sm{arch}.json"
        if not path.exists():
            print(f"kernels: no tuned table {path}; GEMMs on sm_{arch} use the default tiles")
            continue
        table = json.loads(path.read_text())
        for kernel_name, buckets in table.items():
            if kernel_name.startswith("_"):
                continue
            if kernel_name not in by_kernel:
                raise SystemExit(f"{path}: unknown kernel {kernel_name}")
            rows = []
            for bucket in buckets:
                max_m, base = bucket["max_m"], bucket["variant"]
                for out in ("bf16", "fp32"):
                    if f"{base}_{out}" not in by_kernel[kernel_name]:
                        raise SystemExit(f"{path}: {kernel_name} has no variant {base}_{out} "
                                         f"(known: {sorted(by_kernel[kernel_name])})")
                rows.append((-1 if max_m is None else int(max_m), base))
            if rows[-1][0] != -1:
                raise SystemExit(f"{path}: the last {kernel_name} bucket must have max_m null")
            tables.setdefault(arch, {})[kernel_name] = rows
    return tables


def c_string(s):
    return json.dumps(s)


def write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


GENERATED_NOTE = "// Generated by kernels/aot_build.py from kernels/*.py; do not edit."


def launch_wrapper(kernel):
    """The typed launch wrapper of a kernel: (declaration lines, definition lines)."""
    args = kernel.launch_args()
    names = [a for a, _ in args]
    params = ", ".join(
        f"CUdeviceptr {a}" if t[0] == "*" else f"{SCALAR_C_TYPES[t]} {a}" for a, t in args)
    arg_doc = ", ".join(
        f"{a} {'|'.join(sorted({v.signature[a] for v in kernel.variants}))}" for a in names)
    signature = (f"{kernel.name}(const Launch& launch, const KernelVariant& variant, {params})")
    declaration = [f"// {kernel.summary}", f"// ({arg_doc})", f"void {signature};", ""]
    definition = [f"void kernels::{signature} {{", f'  check_kernel(variant, "{kernel.name}");']
    hinted = {a for v in kernel.variants for a in v.divisible_by_16}
    definition += [f'  check_divisible(variant, {i}, "{a}", int64_t({a}));'
                   for i, a in enumerate(names) if a in hinted]
    definition += [f"  void* args[] = {{{', '.join('&' + a for a in names)}, nullptr, nullptr}};",
                   f"  launch_kernel(launch, variant, args, {len(names)});", "}", ""]
    return declaration, definition


def generate(kernels, archs, results, tuned, out_dir):
    cubin_dir = out_dir / "cubin"
    cubin_dir.mkdir(parents=True, exist_ok=True)
    declarations, definitions = [], []
    incbin, tag_arrays, variant_rows = [], [], []
    for kernel in kernels:
        declaration, definition = launch_wrapper(kernel)
        declarations += declaration
        definitions += definition
        names = [a for a, _ in kernel.launch_args()]
        for v in kernel.variants:
            mask = sum(1 << names.index(a) for a in v.divisible_by_16)
            tags = f"k_tags_{kernel.name}_{v.name}"
            tag_arrays.append(f"const KernelTag {tags}[] = {{" + ", ".join(
                f"{{{c_string(k)}, {int(val)}}}" for k, val in v.tags.items()) + "};")
            for arch in kernel_archs(kernel, archs):
                key, cubin, md = results[(kernel.name, v.name, arch)]
                symbol = f"trident_cubin_sm{arch}_{kernel.name}_{v.name}"
                cubin_path = cubin_dir / f"sm{arch}_{kernel.name}_{v.name}.cubin"
                if not cubin_path.exists() or cubin_path.read_bytes() != cubin:
                    cubin_path.write_bytes(cubin)
                # The cubin goes into .rodata as it is; the hash comment makes this file change
                # (and recompile) whenever the cubin does.
                incbin += [f"// {key}",
                           f'asm(".section .rodata\\n.balign 128\\n.globl {symbol}\\n.hidden '
                           f'{symbol}\\n{symbol}:\\n.incbin \\"{cubin_path}\\"\\n.previous\\n");',
                           f'extern "C" const unsigned char {symbol}[];']
                variant_rows.append(
                    f"    {{{c_string(kernel.name)}, {c_string(v.name)}, {arch}, "
                    f"{c_string(md['name'])}, {symbol}, {len(cubin)}, {md['num_warps']}, "
                    f"{md['num_ctas']}, {md['shared']}, {md['global_scratch_size']}, "
                    f"{md['global_scratch_align']}, {md['profile_scratch_size']}, "
                    f"{md['profile_scratch_align']}, 0x{mask:x}u, {tags}, "
                    f"int(std::size({tags}))}},")
    tuned_rows = [f"    {{{c_string(kernel_name)}, {arch}, {max_m}, {c_string(base)}}},"
                  for arch, per_kernel in sorted(tuned.items())
                  for kernel_name, rows in per_kernel.items() for max_m, base in rows]

    header = [GENERATED_NOTE, "#pragma once", "", "#include <cstdint>", "",
              '#include "backend/cuda/kernel_launch.h"', "", "namespace trident::cuda::kernels {",
              ""] + declarations + ["}  // namespace trident::cuda::kernels", ""]
    source = [GENERATED_NOTE, '#include "backend/cuda/trident_kernels.h"', "",
              "#include <iterator>", ""] + incbin + ["", "namespace trident::cuda {", ""]
    source += definitions + tag_arrays + ["", "namespace {", "const KernelVariant k_variants[] = {"]
    source += variant_rows + ["};", "const TunedChoice k_tuned[] = {"]
    source += tuned_rows or ['    {"", 0, -1, ""},']
    source += ["};", f"const int k_archs[] = {{{', '.join(map(str, archs))}}};",
               "}  // namespace", "",
               "std::span<const KernelVariant> compiled_kernel_variants() { return k_variants; }",
               "std::span<const TunedChoice> tuned_kernel_choices() {",
               f"  return std::span<const TunedChoice>(k_tuned, {len(tuned_rows)});", "}",
               "std::span<const int> compiled_kernel_archs() { return k_archs; }", "",
               "}  // namespace trident::cuda", ""]
    write_if_changed(out_dir / "trident_kernels.h", "\n".join(header))
    write_if_changed(out_dir / "trident_kernels.cpp", "\n".join(source))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--archs", default="90",
                        help="compute capabilities, separated by ',' or ';' (90 = sm_90)")
    parser.add_argument("--tuned-dir", type=Path, default=KERNELS_DIR / "tuned")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--stamp", type=Path, help="file to touch when done")
    args = parser.parse_args()

    if not triton.__version__.startswith(REQUIRED_TRITON):
        raise SystemExit(f"the kernel build needs triton {REQUIRED_TRITON}x (kernels/requirements"
                         f".txt); {sys.executable} has triton {triton.__version__}")
    triton.runtime.driver.set_active(StandInDriver())
    archs = [int(a) for a in args.archs.replace(";", ",").split(",") if a.strip()]
    kernels = load_kernels()
    validate(kernels)
    results = compile_all(kernels, archs, args.cache_dir, max(1, args.jobs))
    tuned = load_tuned(args.tuned_dir, archs, kernels)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    generate(kernels, archs, results, tuned, args.out_dir)
    if args.stamp:
        args.stamp.touch()


if __name__ == "__main__":
    main()
