"""Many streams at once give the text each gives alone; a client that disconnects cancels its
request and its KV pages come back."""

import concurrent.futures
import time

import openai

from conftest import CLIENT_TIMEOUT

N_STREAMS = 64
MAX_TOKENS = 24


def prompt(i):
    # Different lengths and contents; some share a beginning, so batching meets the prefix cache.
    head = "Once upon a time " if i % 3 == 0 else ""
    return f"{head}request {i}: " + "abcdefghij"[: i % 10] * (1 + i % 4)


def test_64_concurrent_streams_match_each_request_alone(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", timeout=CLIENT_TIMEOUT, max_retries=0)
    alone = [c.completions.create(model=server.model, prompt=prompt(i), max_tokens=MAX_TOKENS,
                                  temperature=0, extra_body={"ignore_eos": True}).choices[0].text
             for i in range(N_STREAMS)]

    def stream(i):
        chunks = c.completions.create(model=server.model, prompt=prompt(i), max_tokens=MAX_TOKENS,
                                      temperature=0, stream=True, extra_body={"ignore_eos": True},
                                      stream_options={"include_usage": True})
        text, usage = "", None
        for ch in chunks:
            if ch.choices:
                text += ch.choices[0].text
            if ch.usage:
                usage = ch.usage
        return text, usage

    steps_before = server.metrics()["trident_engine_steps_total"]
    with concurrent.futures.ThreadPoolExecutor(N_STREAMS) as pool:
        results = list(pool.map(stream, range(N_STREAMS), timeout=CLIENT_TIMEOUT * 2))
    steps = server.metrics()["trident_engine_steps_total"] - steps_before
    for i, (text, usage) in enumerate(results):
        assert text == alone[i], f"request {i}"
        assert usage.completion_tokens == MAX_TOKENS
    # Batched: far fewer steps than 64 requests run one after another would take (on a GPU steps
    # are fast beside the clients' arrivals, so batches are smaller there than on a CPU).
    assert steps < N_STREAMS * MAX_TOKENS / 2, steps


def wait_for(predicate, what, seconds=20):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_a_client_that_disconnects_cancels_its_request_and_frees_its_pages(server):
    m = server.metrics()
    cancelled_before = m.get('trident_requests_finished_total{finish_reason="cancelled"}', 0)
    body = {"model": server.model, "prompt": "a long story", "max_tokens": 450, "temperature": 0,
            "ignore_eos": True, "stream": True}
    r = server.stream("/v1/completions", body)
    assert r.status == 200
    assert r.readline().startswith(b"data: ")  # the first token came: the request holds pages now
    r.connection_to_close.close()
    # The connection is closed; the server notices, cancels and frees the pages.
    def freed():
        m = server.metrics()
        return (m["trident_requests_in_flight"] == 0 and
                m["trident_kv_pages_used"] == m["trident_kv_pages_cached"] and
                m.get('trident_requests_finished_total{finish_reason="cancelled"}', 0) > cancelled_before)
    wait_for(freed, "the cancelled request's pages are free")
    m = server.metrics()
    assert m["trident_engine_generated_tokens_total"] > 0


def test_a_non_streaming_client_that_disconnects_cancels_too(server):
    m = server.metrics()
    cancelled_before = m.get('trident_requests_finished_total{finish_reason="cancelled"}', 0)
    body = {"model": server.model, "prompt": "another long story", "max_tokens": 450,
            "temperature": 0, "ignore_eos": True}
    try:
        server.post("/v1/completions", json=body, timeout=0.05)
    except TimeoutError:
        pass
    wait_for(lambda: server.metrics().get('trident_requests_finished_total{finish_reason="cancelled"}', 0)
             > cancelled_before, "the abandoned request is cancelled")
    wait_for(lambda: server.metrics()["trident_requests_in_flight"] == 0, "nothing is in flight")
