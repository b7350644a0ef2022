"""A server whose KV pool is small: cached prefixes nobody uses are evicted least recently used
first, and when running requests outgrow the pool the newest is preempted and recomputed later;
every request still finishes with the text it gives alone."""

import concurrent.futures

import pytest

from conftest import CLIENT_TIMEOUT

CONTEXT = 512  # 8 pages of 64 tokens
PAGES = 10


@pytest.fixture(scope="module")
def small(start_server):
    return start_server("--max-context", str(CONTEXT), "--kv-pages", str(PAGES))


def complete(server, prompt, max_tokens):
    r = server.post("/v1/completions", json={"model": server.model, "prompt": prompt,
                                             "max_tokens": max_tokens, "temperature": 0,
                                             "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()


def test_unused_cached_prefixes_are_evicted_least_recently_used_first(small):
    # Each prompt leaves 2 whole pages cached; the fifth one finds the pool short.
    prompts = [list(range(100 + 200 * i, 100 + 200 * i + 140)) for i in range(5)]
    for p in prompts[:4]:
        assert complete(small, p, 4)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert complete(small, prompts[0], 4)["usage"]["prompt_tokens_details"]["cached_tokens"] == 128
    before = small.metrics()["trident_prefix_cache_evicted_pages_total"]
    complete(small, prompts[4], 4)
    m = small.metrics()
    assert m["trident_prefix_cache_evicted_pages_total"] > before
    # Prompt 1 was the least recently used: its last page went; prompt 0, used again, stayed.
    assert complete(small, prompts[0], 4)["usage"]["prompt_tokens_details"]["cached_tokens"] == 128
    assert complete(small, prompts[1], 4)["usage"]["prompt_tokens_details"]["cached_tokens"] < 128


def test_requests_that_outgrow_the_pool_are_preempted_and_all_finish(small):
    # Three requests of 250 tokens want 12 pages; the pool has 10.
    prompts = [f"Chapter {i}. It was a fine morning, and" for i in range(3)]
    alone = [complete(small, p, 240)["choices"][0]["text"] for p in prompts]
    before = small.metrics()["trident_preemptions_total"]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: complete(small, p, 240), prompts,
                                 timeout=CLIENT_TIMEOUT * 2))
    assert [t["choices"][0]["text"] for t in together] == alone
    assert all(t["usage"]["completion_tokens"] == 240 for t in together)
    assert small.metrics()["trident_preemptions_total"] > before
