"""Small memory-bound ops on bf16 activations, each one pass over its operands:

  embedding_rows  out[t, :] = table[ids[t], :]  (table bf16 or f32, out bf16): the token
                  embedding, and the gather of the rows that need logits. An id outside
                  [0, vocab) writes a row of NaN instead of reading outside the table, so the
                  error shows downstream (the host cannot see ids without a synchronization).
  silu_mul        out = silu(gate) * up = gate / (1 + exp(-gate)) * up, f32 arithmetic; out may
                  alias gate or up.
  add             a = bf16(a + b): one correctly rounded add, the same bits as the CPU reference.

Programs cover BLOCK elements (embedding: BLOCK columns of one row). ALIGNED variants assume
16-byte aligned operands and lengths that are multiples of 16, so loads are 16 bytes wide.
"""
import triton
import triton.language as tl

from variant import DTYPE_CODES, Kernel, Variant

BLOCK = 1024


@triton.jit
def embedding_rows(ids_ptr, table_ptr, out_ptr, width, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    token = tl.load(ids_ptr + row)
    known = (token >= 0) & (token < vocab)
    in_row = cols < width
    v = tl.load(table_ptr + token.to(tl.int64) * width + cols, mask=in_row & known, other=0.0)
    v = tl.where(known, v.to(tl.float32), float("nan"))
    tl.store(out_ptr + row * width + cols, v.to(out_ptr.dtype.element_ty), mask=in_row)


@triton.jit
def silu_mul(gate_ptr, up_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    g = tl.load(gate_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    y = tl.math.div_rn(g, 1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def add(a_ptr, b_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    a = tl.load(a_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(a_ptr + offs, (a + b).to(a_ptr.dtype.element_ty), mask=inside)


def _variant(signature, aligned_args, aligned, tags=None):
    signature = dict(signature, BLOCK="constexpr")
    name = "_".join([f"{k.lower()}{v}" for k, v in (tags or {}).items()] +
                    ["aligned" if aligned else "any"])
    return Variant(name=name, signature=signature, constexprs={"BLOCK": BLOCK}, num_warps=4,
                   num_stages=1, divisible_by_16=aligned_args if aligned else (),
                   tags=dict(tags or {}, BLOCK=BLOCK, ALIGNED=int(aligned)))


def _embedding_variant(table, aligned):
    signature = {"ids_ptr": "*i32", "table_ptr": f"*{table}", "out_ptr": "*bf16", "width": "i32",
                 "vocab": "i32"}
    return _variant(signature, ("table_ptr", "out_ptr", "width"), aligned,
                    {"TABLE": DTYPE_CODES[table]})


_SILU = {"gate_ptr": "*bf16", "up_ptr": "*bf16", "out_ptr": "*bf16", "numel": "i64"}
_ADD = {"a_ptr": "*bf16", "b_ptr": "*bf16", "numel": "i64"}

KERNELS = [
    Kernel("embedding_rows", embedding_rows,
           [_embedding_variant(t, a) for t in ("bf16", "fp32") for a in (True, False)],
           "out[t] = table[ids[t]] (bf16 out; NaN rows for ids outside the table)"),
    Kernel("silu_mul", silu_mul,
           [_variant(_SILU, ("gate_ptr", "up_ptr", "out_ptr", "numel"), a) for a in (True, False)],
           "out = silu(gate) * up, bf16"),
    Kernel("add", add, [_variant(_ADD, ("a_ptr", "b_ptr", "numel"), a) for a in (True, False)],
           "a += b, bf16"),
]
