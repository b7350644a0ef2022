"""Next-token sampling on the GPU, one row of logits [B, V] per program, with the CPU sampler's
rules (src/runtime/sampler.cpp):

  greedy   temperature 0 or top_k 1: the largest logit, the lowest id among equals
  top-k    the k largest logits, ties to the lower id
  top-p    of those, by descending logit (ties to the lower id), the shortest prefix whose mass
           reaches top_p, with weights exp((logit - max) / temperature) normalized over the top-k
  draw     u = Philox(seed, step) in [0, 1), and the token where the cumulative weight of the
           chosen set, walked in id order, first exceeds u times its mass

The sets are found without sorting: logits map to order-preserving 32-bit keys, and bisection
over the keys finds the boundary of each set (the smallest key inside it), counting elements for
top-k and summing weights for top-p; where equal logits straddle a boundary, a bisection over ids
takes the lowest ids, as the CPU's sort does. Each bisection step is one pass over the row, so a
row costs up to ~70 passes when both limits are set (2 with neither); B rows run in parallel.

Per-row parameters: temperature f32, top_k i32 (0: no limit), top_p f32 (1: no limit), seed i64,
step i64 (the draws this sequence made before: Philox's counter). Writes ids i32 [B].
"""
import triton
import triton.language as tl

from variant import DTYPE_CODES, Kernel, Variant

BLOCK = 2048


@triton.jit
def order_key(x):
    """An i64 in [0, 2^32) that orders like the float x (-0 and +0 equal)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    magnitude = (bits & 0x7FFFFFFF).to(tl.int64)
    return tl.where(bits >= 0, magnitude + 2147483648, 2147483647 - magnitude)


@triton.jit
def load_row(row_ptr, c, V, BLOCK: tl.constexpr):
    """Ids [c, c + BLOCK), their logits (f32, -inf past V) and keys."""
    idx = c + tl.arange(0, BLOCK)
    x = tl.load(row_ptr + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
    return idx, x, order_key(x)


@triton.jit
def in_set(key, idx, bound_key, bound_id):
    """Inside the set whose last element, in (descending key, ascending id) order, has key
    bound_key and id bound_id."""
    return (key > bound_key) | ((key == bound_key) & (idx <= bound_id))


@triton.jit
def count_and_mass(row_ptr, V, m, inv_t, k_key, k_id, at_least, BLOCK: tl.constexpr):
    """Over the top-k set: how many elements have key >= at_least, and their weight."""
    count = tl.zeros((), tl.int32)
    mass = tl.zeros((), tl.float32)
    for c in range(0, V, BLOCK):
        idx, x, key = load_row(row_ptr, c, V, BLOCK)
        inside = in_set(key, idx, k_key, k_id) & (key >= at_least) & (idx < V)
        count += tl.sum(inside.to(tl.int32))
        mass += tl.sum(tl.where(inside, tl.exp((x - m) * inv_t), 0.0))
    return count, mass


@triton.jit
def lowest_ids(row_ptr, V, key_at, k_key, k_id, need, BLOCK: tl.constexpr):
    """The id of the need-th lowest id among the top-k set's elements with key key_at."""
    lo = tl.zeros((), tl.int32)
    hi = V - 1
    while lo < hi:
        mid = (lo + hi) // 2
        count = tl.zeros((), tl.int32)
        for c in range(0, V, BLOCK):
            idx, x, key = load_row(row_ptr, c, V, BLOCK)
            tied = in_set(key, idx, k_key, k_id) & (key == key_at) & (idx <= mid)
            count += tl.sum(tied.to(tl.int32))
        lo = tl.where(count >= need, lo, mid + 1)
        hi = tl.where(count >= need, mid, hi)
    return lo


@triton.jit
def sample_tokens(logits_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, step_ptr, ids_ptr,
                  V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * V
    temperature = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)

    m = -float("inf")
    best = V
    for c in range(0, V, BLOCK):
        idx, x, key = load_row(row_ptr, c, V, BLOCK)
        chunk_max = tl.max(x)
        first = tl.min(tl.where(x == chunk_max, idx, V))
        best = tl.where(chunk_max > m, first, best)
        m = tl.maximum(m, chunk_max)
    if (temperature == 0.0) | (top_k == 1):
        tl.store(ids_ptr + row, best)
        return

    inv_t = tl.math.div_rn(1.0, temperature)
    top_key = order_key(m)
    # Top-k: the largest key v with at least top_k elements >= v, then the lowest tied ids.
    k_key = tl.zeros((), tl.int64)
    k_id = V - 1
    if (top_k > 0) & (top_k < V):
        lo = tl.zeros((), tl.int64)
        hi = top_key
        while lo < hi:
            mid = (lo + hi + 1) // 2
            count, _ = count_and_mass(row_ptr, V, m, inv_t, 0, V - 1, mid, BLOCK)
            lo = tl.where(count >= top_k, mid, lo)
            hi = tl.where(count >= top_k, hi, mid - 1)
        k_key = lo
        above, _ = count_and_mass(row_ptr, V, m, inv_t, 0, V - 1, k_key + 1, BLOCK)
        tied, _ = count_and_mass(row_ptr, V, m, inv_t, 0, V - 1, k_key, BLOCK)
        if top_k - above < tied - above:
            k_id = lowest_ids(row_ptr, V, k_key, 0, V - 1, top_k - above, BLOCK)

    # Top-p over the top-k set: the largest key v whose elements >= v weigh at least top_p of
    # the set, then as many of the tied ids as the mass needs.
    p_key = tl.zeros((), tl.int64)
    p_id = V - 1
    if top_p < 1.0:
        _, total = count_and_mass(row_ptr, V, m, inv_t, k_key, k_id, 0, BLOCK)
        target = top_p * total
        lo = k_key
        hi = top_key
        while lo < hi:
            mid = (lo + hi + 1) // 2
            _, mass = count_and_mass(row_ptr, V, m, inv_t, k_key, k_id, mid, BLOCK)
            lo = tl.where(mass >= target, mid, lo)
            hi = tl.where(mass >= target, hi, mid - 1)
        p_key = lo
        above_n, above = count_and_mass(row_ptr, V, m, inv_t, k_key, k_id, p_key + 1, BLOCK)
        tied_n, tied = count_and_mass(row_ptr, V, m, inv_t, k_key, k_id, p_key, BLOCK)
        tied_n -= above_n
        each = (tied - above) / tied_n
        need = tl.minimum(tl.maximum(tl.ceil((target - above) / each).to(tl.int32), 1), tied_n)
        if need < tied_n:
            p_id = lowest_ids(row_ptr, V, p_key, k_key, k_id, need, BLOCK)

    # The draw, walking the chosen set in id order.
    mass = tl.zeros((), tl.float32)
    for c in range(0, V, BLOCK):
        idx, x, key = load_row(row_ptr, c, V, BLOCK)
        chosen = in_set(key, idx, k_key, k_id) & in_set(key, idx, p_key, p_id) & (idx < V)
        mass += tl.sum(tl.where(chosen, tl.exp((x - m) * inv_t), 0.0))
    u = tl.rand(tl.load(seed_ptr + row), tl.load(step_ptr + row)) * mass
    running = tl.zeros((), tl.float32)
    pick = V
    last = best
    for c in range(0, V, BLOCK):
        idx, x, key = load_row(row_ptr, c, V, BLOCK)
        chosen = in_set(key, idx, k_key, k_id) & in_set(key, idx, p_key, p_id) & (idx < V)
        w = tl.where(chosen, tl.exp((x - m) * inv_t), 0.0)
        cumulative = running + tl.cumsum(w, 0)
        pick = tl.minimum(pick, tl.min(tl.where(chosen & (cumulative > u), idx, V)))
        last = tl.maximum(last, tl.max(tl.where(chosen & (w > 0), idx, -1)))
        running += tl.sum(w)
    # u rounds up to the whole mass only through rounding: the last id of the set then.
    tl.store(ids_ptr + row, tl.where(pick < V, pick, last))


def _variant(logits):
    signature = {"logits_ptr": f"*{logits}", "temperature_ptr": "*fp32", "top_k_ptr": "*i32",
                 "top_p_ptr": "*fp32", "seed_ptr": "*i64", "step_ptr": "*i64", "ids_ptr": "*i32",
                 "V": "i32", "BLOCK": "constexpr"}
    return Variant(name=logits, signature=signature, constexprs={"BLOCK": BLOCK}, num_warps=8,
                   num_stages=1, tags={"LOGITS": DTYPE_CODES[logits]})


KERNELS = [Kernel("sample_tokens", sample_tokens, [_variant("fp32"), _variant("bf16")],
                  "next tokens from logits rows: greedy, or temperature with top-k and top-p")]
