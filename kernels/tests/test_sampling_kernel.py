"""Checks kernels/sampling.py under Triton's interpreter against the CPU sampler's rules
(src/runtime/sampler.cpp) written in Python: greedy is the argmax with ties to the lower id,
every draw lies in the top-k / top-p set (ties at either boundary to the lower ids), and the
draws follow the tempered distribution (chi-square). No GPU needed:

    python3 kernels/tests/test_sampling_kernel.py        (or pytest kernels/tests)
"""
import math
import random

import interpreter  # noqa: F401  (must come before triton)
import torch

import sampling


def allowed_set(logits, temperature, top_k, top_p):
    """sampler.cpp's candidates: {id: weight} of the set a draw may return."""
    V = len(logits)
    order = sorted(range(V), key=lambda i: (-logits[i], i))
    k = min(top_k, V) if top_k > 0 else V
    order = order[:k]
    m = logits[order[0]]
    inv_t = 1.0 / temperature
    probs = [math.exp((logits[i] - m) * inv_t) for i in order]
    total = sum(probs)
    n = k
    if top_p < 1.0:
        acc = 0.0
        for i in range(k):
            acc += probs[i] / total
            if acc >= top_p:
                n = i + 1
                break
    return {order[i]: probs[i] for i in range(n)}


def draw(logits, temperature, top_k, top_p, seed, steps):
    """One row per step, all with the same logits and parameters."""
    B = len(steps)
    rows = logits.repeat(B, 1).contiguous()
    ids = torch.full((B, ), -7, dtype=torch.int32)
    sampling.sample_tokens[(B, )](rows, torch.full((B, ), temperature),
                                  torch.full((B, ), top_k, dtype=torch.int32),
                                  torch.full((B, ), top_p),
                                  torch.full((B, ), seed, dtype=torch.int64),
                                  torch.tensor(steps, dtype=torch.int64), ids, logits.numel(),
                                  BLOCK=64)
    return ids.tolist()


def test_greedy_is_the_argmax_with_ties_to_the_lower_id():
    for V in (1, 7, 130, 300):
        logits = torch.randn(V)
        if V > 1:
            logits[V // 3] = logits[V - 1] = logits.max() + 1  # a tie for the maximum
        want = int(torch.argmax(logits)) if V == 1 else V // 3
        assert draw(logits, 0.0, 0, 1.0, 1, [0, 1]) == [want, want]
        assert draw(logits, 1.0, 1, 0.5, 1, [0]) == [want]


def test_draws_lie_in_the_top_k_top_p_set_with_tied_boundaries():
    for V, temperature, top_k, top_p in ((97, 0.7, 10, 1.0), (97, 1.3, 0, 0.8),
                                         (200, 1.0, 30, 0.6), (130, 0.5, 5, 0.95)):
        logits = torch.randn(V)
        for i in random.sample(range(V), V // 4):  # many exact ties, at the boundaries too
            logits[i] = float(round(float(logits[i]), 1))
        allowed = allowed_set(logits.tolist(), temperature, top_k, top_p)
        got = draw(logits, temperature, top_k, top_p, random.randrange(1 << 40), list(range(8)))
        assert set(got) <= set(allowed), (sorted(set(got) - set(allowed)), top_k, top_p)


def test_every_tied_boundary_id_is_the_lowest():
    logits = torch.zeros(40)
    logits[[3, 9, 17, 30]] = 2.0  # four tied at the top, top_k 3: ids 3, 9, 17 only
    got = draw(logits, 1.0, 3, 1.0, 5, list(range(30)))
    assert set(got) == {3, 9, 17}


def chi_square(counts, probs):
    """Chi-square statistic and degrees of freedom, bins with expected counts < 5 merged."""
    n = sum(counts.values())
    stat, df, pool_obs, pool_exp = 0.0, -1, 0, 0.0
    for token, p in sorted(probs.items(), key=lambda kv: -kv[1]):
        obs, exp = counts.get(token, 0), n * p
        if exp < 5:
            pool_obs, pool_exp = pool_obs + obs, pool_exp + exp
            continue
        stat += (obs - exp)**2 / exp
        df += 1
    if pool_exp > 0:
        stat += (pool_obs - pool_exp)**2 / pool_exp
        df += 1
    return stat, df


def chi_square_bound(df, z=4.75):
    """The chi-square quantile at p = 1e-6 (z = 4.75), Wilson-Hilferty's approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df)))**3


def test_draws_follow_the_tempered_distribution():
    # Temperature alone (no set to find, so the interpreter stays quick); the GPU test checks
    # the distribution under top-k and top-p with many more draws.
    V = 30
    logits = torch.randn(V) * 2
    allowed = allowed_set(logits.tolist(), 0.8, 0, 1.0)
    total = sum(allowed.values())
    probs = {t: w / total for t, w in allowed.items()}
    got = draw(logits, 0.8, 0, 1.0, random.randrange(1 << 40), list(range(2000)))
    counts = {}
    for t in got:
        counts[t] = counts.get(t, 0) + 1
    stat, df = chi_square(counts, probs)
    assert stat < chi_square_bound(df), (stat, df)


if __name__ == "__main__":
    seed = random.randrange(1 << 30)
    random.seed(seed)
    torch.manual_seed(seed)
    print(f"seed {seed}")
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"{name}: ok", flush=True)
