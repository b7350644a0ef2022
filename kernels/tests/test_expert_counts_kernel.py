"""Checks kernels/expert_counts.py under Triton's interpreter against the CPU op's rule
(cpu::add_expert_counts): counts[e] grows by the number of ids equal to e, ids outside
[0, n_experts) are skipped, other rows of the counter stay as they were. No GPU needed:

    python3 kernels/tests/test_expert_counts_kernel.py        (or pytest kernels/tests)
"""
import random

import interpreter  # noqa: F401  (must come before triton)
import torch

import expert_counts


def add_counts(ids, counts_row, n_experts, block=expert_counts.BLOCK):
    numel = ids.numel()
    grid = (max(1, (numel + block - 1) // block), )
    expert_counts.add_expert_counts[grid](ids, counts_row, numel, n_experts, BLOCK=block)


def reference(ids, start, n_experts):
    want = start.clone()
    for e in ids.flatten().tolist():
        if 0 <= e < n_experts:
            want[e] += 1
    return want


def test_counts_grow_by_each_experts_ids_and_skip_ids_outside_the_range():
    rng = random.Random(7)
    for tokens, top_k, n_experts, block in ((1, 1, 1, 64), (5, 3, 16, 64), (37, 8, 256, 64),
                                            (300, 4, 16, 1024), (129, 8, 64, 128)):
        ids = torch.tensor([[rng.randrange(-2, n_experts + 2) for _ in range(top_k)]
                            for _ in range(tokens)], dtype=torch.int32)
        # A counter that already holds counts from earlier steps, beside other layers' rows.
        counter = torch.randint(0, 1 << 40, (3, n_experts), dtype=torch.int64)
        before = counter.clone()
        add_counts(ids, counter[1], n_experts, block)
        assert torch.equal(counter[1], reference(ids, before[1], n_experts)), (tokens, top_k)
        assert torch.equal(counter[0], before[0]) and torch.equal(counter[2], before[2])


def test_every_id_on_one_expert_counts_them_all():
    # Every program adds to the same address: the atomics must not lose any.
    ids = torch.full((1000, 8), 5, dtype=torch.int32)
    counts = torch.zeros(16, dtype=torch.int64)
    add_counts(ids, counts, 16, block=128)
    add_counts(ids, counts, 16, block=128)
    assert counts[5].item() == 16000 and counts.sum().item() == 16000


def test_no_ids_leave_the_counts_unchanged():
    counts = torch.arange(4, dtype=torch.int64)
    add_counts(torch.empty(0, dtype=torch.int32), counts, 4)
    assert counts.tolist() == [0, 1, 2, 3]


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print(name, "ok")
