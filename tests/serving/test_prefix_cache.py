"""Requests that share a prefix reuse its cached KV pages, and get the tokens a cold run gives."""

import pytest

SHARED = list(range(20, 20 + 200))  # 200 token ids: three whole pages of 64


def complete(server, tail, **kw):
    r = server.post("/v1/completions", json={"model": server.model, "prompt": SHARED + tail,
                                             "max_tokens": 12, "temperature": 0, "ignore_eos": True,
                                             **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_shared_prefixes_hit_the_cache_and_give_cold_results(start_server):
    warm = start_server()
    cold = start_server("--no-prefix-cache")
    tails = [[5 + i, 7 + i, 9] for i in range(6)]
    first = complete(warm, tails[0])
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    for tail in tails[1:]:
        hit = complete(warm, tail)
        assert hit["usage"]["prompt_tokens_details"]["cached_tokens"] == 3 * 64
        assert hit["choices"][0]["text"] == complete(cold, tail)["choices"][0]["text"]
        assert complete(cold, tail)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    m = warm.metrics()
    assert m["trident_prefix_cache_hit_tokens_total"] == 5 * 3 * 64
    assert m["trident_prefix_cache_queried_tokens_total"] == 6 * (len(SHARED) + 3)
    assert m["trident_prefix_cache_hit_rate"] == pytest.approx(5 * 3 * 64 / (6 * 203))
    assert m["trident_kv_pages_cached"] >= 3
    assert cold.metrics()["trident_prefix_cache_hit_tokens_total"] == 0


def test_a_repeated_prompt_gives_the_same_text_from_the_cache(server):
    a = complete(server, [1, 2, 3, 4], max_tokens=70)
    b = complete(server, [1, 2, 3, 4], max_tokens=70)
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= 3 * 64
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
