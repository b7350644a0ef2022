"""/metrics reflects the traffic sent: request and token counters, latency histograms, errors,
queue, KV pool and prefix cache gauges."""

import re
import time

import pytest


@pytest.fixture(scope="module")
def fresh(start_server):
    return start_server()


def test_metrics_count_requests_tokens_and_latencies(fresh):
    before = fresh.metrics()
    assert before.get('trident_requests_total{endpoint="completions"}', 0) == 0
    lengths = [3, 5, 8]
    for n in lengths:
        r = fresh.post("/v1/completions", json={"model": fresh.model, "prompt": "count me",
                                                "max_tokens": n, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200
    r = fresh.post("/v1/chat/completions", json={"model": fresh.model, "max_tokens": 4, "temperature": 0,
                                                 "ignore_eos": True, "stream": True,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    fresh.post("/v1/completions", json={"model": fresh.model, "prompt": "x", "max_tokens": "many"})
    fresh.post("/v1/completions", json={"model": "nope", "prompt": "x"})

    m = fresh.metrics()
    assert m['trident_requests_total{endpoint="completions"}'] == len(lengths)
    assert m['trident_requests_total{endpoint="chat_completions"}'] == 1
    assert m['trident_requests_finished_total{finish_reason="length"}'] == len(lengths) + 1
    assert m["trident_generation_tokens_total"] == sum(lengths) + 4
    assert m["trident_prompt_tokens_total"] > 0
    assert m['trident_request_errors_total{status="400"}'] == 1
    assert m['trident_request_errors_total{status="404"}'] == 1
    assert m["trident_time_to_first_token_seconds_count"] == len(lengths) + 1
    assert m['trident_time_to_first_token_seconds_bucket{le="+Inf"}'] == len(lengths) + 1
    assert m["trident_time_to_first_token_seconds_sum"] > 0
    assert m["trident_time_per_output_token_seconds_count"] == len(lengths) + 1
    assert m["trident_e2e_request_latency_seconds_count"] == len(lengths) + 1
    assert m["trident_queue_length"] == 0
    assert m["trident_requests_running"] == 0
    assert m["trident_kv_pages_total"] > 0
    assert 0 <= m["trident_kv_utilization_ratio"] <= 1
    assert 0 <= m["trident_kv_fragmentation_ratio"] <= 1
    assert m["trident_engine_steps_total"] >= sum(lengths)


def test_queue_running_and_kv_gauges_follow_the_load(start_server):
    # One request runs at a time: while a long one runs, a second waits in the queue.
    one = start_server("--max-running", "1")
    body = {"model": one.model, "prompt": "It is a truth universally acknowledged",
            "max_tokens": 1000, "temperature": 0, "ignore_eos": True, "stream": True}
    first = one.stream("/v1/completions", body)
    assert first.readline().startswith(b"data: ")
    second = one.stream("/v1/completions", body)
    deadline = time.monotonic() + 20
    while True:
        m = one.metrics()
        if m["trident_queue_length"] == 1:
            break
        assert time.monotonic() < deadline, f"the second request never showed as queued: {m}"
        time.sleep(0.01)
    assert m["trident_requests_running"] == 1
    assert m["trident_requests_in_flight"] == 2
    assert m["trident_kv_pages_used"] >= 1
    assert m["trident_kv_utilization_ratio"] == m["trident_kv_pages_used"] / m["trident_kv_pages_total"]
    assert 0 <= m["trident_kv_fragmentation_ratio"] < 1
    for r in (first, second):
        r.connection_to_close.close()
    deadline = time.monotonic() + 20
    while one.metrics()["trident_requests_in_flight"] > 0:
        assert time.monotonic() < deadline, "the closed streams were not cancelled"
        time.sleep(0.01)
    m = one.metrics()
    assert m["trident_queue_length"] == 0 and m["trident_requests_running"] == 0


def test_histogram_buckets_are_cumulative(fresh):
    text = fresh.get("/metrics").text
    counts = [float(v) for v in
              re.findall(r'^trident_time_to_first_token_seconds_bucket\{le="[^"]+"\} (\S+)$', text, re.M)]
    assert counts == sorted(counts) and counts


def test_every_metric_has_help_and_type(fresh):
    text = fresh.get("/metrics").text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    for name in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"# TYPE {base} " in text or f"# TYPE {name} " in text, name
