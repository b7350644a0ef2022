"""`trident serve --ep 2`: two CPU ranks under mpirun (oversubscribed: CI has two cores), the
routed experts split over them and attention data parallel. Requests spread over both ranks and
give the text and logprobs that one rank gives, streamed or whole, at once or one by one."""

import concurrent.futures
import time
from pathlib import Path

import openai
import pytest

from conftest import CLIENT_TIMEOUT, Server, trident_binary


def built_without_mpi():
    cache = Path(trident_binary()).parent / "CMakeCache.txt"
    return cache.exists() and "TRIDENT_MPI:BOOL=OFF" in cache.read_text()


pytestmark = pytest.mark.skipif(built_without_mpi(),
                                reason="this build has no MPI: --ep runs one rank only")

N_REQUESTS = 16
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def servers(binary, model_dir):
    started = []
    try:
        for extra in ((), ("--ep", "2")):
            started.append(Server(binary, model_dir, *extra))
        yield started
    finally:
        for s in started:
            s.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", timeout=CLIENT_TIMEOUT,
                         max_retries=0)


def prompt(i):
    return ["It is a truth universally acknowledged", "Emma Woodhouse, handsome, clever",
            "Chapter", "The family of Dashwood"][i % 4] + f" ({i})" * (i % 3)


def complete(server, i, stream):
    kw = dict(model=server.model, prompt=prompt(i), max_tokens=MAX_TOKENS, temperature=0,
              extra_body={"ignore_eos": True})
    if stream:
        return "".join(ch.choices[0].text for ch in client(server).completions.create(stream=True, **kw)
                       if ch.choices)
    return client(server).completions.create(**kw).choices[0].text


def test_concurrent_requests_spread_over_both_ranks_and_give_one_rank_s_text(servers):
    one, two = servers
    alone = [complete(one, i, stream=False) for i in range(N_REQUESTS)]
    with concurrent.futures.ThreadPoolExecutor(N_REQUESTS) as pool:
        spread = list(pool.map(lambda i: complete(two, i, stream=i % 2 == 0), range(N_REQUESTS),
                               timeout=CLIENT_TIMEOUT * 2))
    for i in range(N_REQUESTS):
        assert spread[i] == alone[i], f"request {i}"
    m = two.metrics()
    per_rank = [m[f'trident_rank_requests_total{{rank="{r}"}}'] for r in (0, 1)]
    assert sum(per_rank) == N_REQUESTS
    assert min(per_rank) >= N_REQUESTS // 4, per_rank
    assert m["trident_requests_in_flight"] == 0
    assert m["trident_generation_tokens_total"] == N_REQUESTS * MAX_TOKENS


def test_requests_one_by_one_match_while_the_other_rank_idles(servers):
    # One request at a time: the rank without it still joins every MoE layer's exchange (were it
    # not to, the other would wait for it until --ep-timeout and fail).
    one, two = servers
    keys = [f'trident_rank_requests_total{{rank="{r}"}}' for r in (0, 1)]
    before = [two.metrics()[k] for k in keys]
    # Idle ranks weigh the same: a request goes where fewer went before, so these even the
    # counts out and then take turns.
    n = int(abs(before[0] - before[1])) + 4
    for i in range(n):
        assert complete(two, i, stream=True) == complete(one, i, stream=False)
    given = [two.metrics()[k] - b for k, b in zip(keys, before)]
    assert sum(given) == n and min(given) >= 2, given


def test_logprobs_and_a_stop_string_agree_with_one_rank(servers):
    one, two = servers
    kw = dict(prompt=prompt(1), max_tokens=8, temperature=0, logprobs=3,
              extra_body={"ignore_eos": True})
    a = client(one).completions.create(model=one.model, **kw).choices[0]
    b = client(two).completions.create(model=two.model, **kw).choices[0]
    assert a.logprobs.tokens == b.logprobs.tokens
    assert b.logprobs.token_logprobs == pytest.approx(a.logprobs.token_logprobs, abs=1e-4)
    stop = a.text[3:6]
    cut = client(two).completions.create(model=two.model, stop=[stop], **kw).choices[0]
    assert cut.text == a.text[:a.text.index(stop)]
    assert cut.finish_reason == "stop"


def test_a_seeded_sample_is_the_same_on_either_rank_count(servers):
    one, two = servers
    kw = dict(prompt=prompt(2), max_tokens=16, temperature=1.0, top_p=0.95, seed=11,
              extra_body={"ignore_eos": True})
    a = client(one).completions.create(model=one.model, **kw).choices[0].text
    for _ in range(2):  # on both ranks: they take turns
        assert client(two).completions.create(model=two.model, **kw).choices[0].text == a


def test_a_client_that_disconnects_frees_the_pages_on_its_rank(servers):
    _, two = servers
    responses = [two.stream("/v1/completions", {"model": two.model, "prompt": prompt(i),
                                                "max_tokens": 1000, "ignore_eos": True,
                                                "stream": True}) for i in range(2)]
    for r in responses:
        assert r.readline().startswith(b"data: {\"choices\"")

    def wait_until(what, predicate):
        deadline = time.monotonic() + 20
        while not predicate(m := two.metrics()):
            assert time.monotonic() < deadline, f"timed out waiting until {what}: {m}"
            time.sleep(0.01)
        return m

    def running(m):
        return [m[f'trident_rank_requests_running{{rank="{r}"}}'] for r in (0, 1)]

    # Rank 0 hears of rank 1's figures at the exchange before each step: wait for them.
    wait_until("one request runs on each rank", lambda m: running(m) == [1, 1])
    for r in responses:
        r.connection_to_close.close()
    m = wait_until("the dropped requests are cancelled",
                   lambda m: m["trident_requests_in_flight"] == 0 and running(m) == [0, 0])
    assert m["trident_kv_pages_used"] == m["trident_kv_pages_cached"]
