"""Bad requests get an OpenAI-style error (4xx, a message naming the problem) and the server goes
on serving everyone else."""

import json
import socket
import threading
import time

import pytest

from conftest import CLIENT_TIMEOUT

CONTEXT = 256      # --max-context of the server under test
TOKENS_LIMIT = 64  # --max-tokens-limit
BODY_LIMIT = 65536 # --max-body-bytes


@pytest.fixture(scope="module")
def strict(start_server):
    return start_server("--max-context", str(CONTEXT), "--max-tokens-limit", str(TOKENS_LIMIT),
                        "--max-body-bytes", str(BODY_LIMIT))


def expect_error(response, status, *words):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["type"] and err["message"]
    for w in words:
        assert w in err["message"], err["message"]
    return err


def still_serves(server):
    r = server.post("/v1/completions", json={"model": server.model, "prompt": "ok", "max_tokens": 2,
                                             "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


def post_raw(server, path, body: bytes):
    return server.post(path, content=body, headers={"Content-Type": "application/json"})


def test_malformed_json(strict):
    expect_error(post_raw(strict, "/v1/completions", b'{"prompt": "hi",'), 400, "not valid JSON")
    expect_error(post_raw(strict, "/v1/chat/completions", b"[1, 2]"), 400, "JSON object")
    still_serves(strict)


@pytest.mark.parametrize("field,value,words", [
    ("max_tokens", "8", ["max_tokens", "integer"]),
    ("max_tokens", 2.5, ["max_tokens", "integer"]),
    ("temperature", "hot", ["temperature", "number"]),
    ("temperature", 7, ["temperature", "at most 2"]),
    ("top_p", 0, ["top_p"]),
    ("stream", "yes", ["stream", "boolean"]),
    ("stop", 3, ["stop"]),
    ("stop", ["a", "b", "c", "d", "e"], ["stop", "at most 4"]),
    ("prompt", 5, ["prompt"]),
    ("prompt", [[1, 2], [3]], ["prompt"]),
    ("logprobs", 50, ["logprobs"]),
    ("n", 2, ["'n'"]),
    ("seed", "x", ["seed", "integer"]),
])
def test_wrong_types_and_values_name_the_field(strict, field, value, words):
    body = {"model": strict.model, "prompt": "hi", "max_tokens": 2, field: value}
    err = expect_error(strict.post("/v1/completions", json=body), 400, *words)
    assert err["param"] == field or field in err["message"]


def test_bad_chat_messages(strict):
    for messages, word in [("hi", "messages"), ([], "empty"), ([{"content": "x"}], "role"),
                           ([{"role": "wizard", "content": "x"}], "wizard"),
                           ([{"role": "user", "content": [{"type": "image_url"}]}], "text")]:
        r = strict.post("/v1/chat/completions", json={"model": strict.model, "messages": messages})
        expect_error(r, 400, word)
    still_serves(strict)


def test_unknown_model(strict):
    err = expect_error(strict.post("/v1/completions", json={"model": "gpt-17", "prompt": "hi"}),
                       404, "gpt-17", strict.model)
    assert err["code"] == "model_not_found"


def test_prompt_longer_than_the_context(strict):
    r = strict.post("/v1/completions", json={"model": strict.model, "prompt": list(range(3, 3 + CONTEXT + 10)),
                                             "max_tokens": 1})
    expect_error(r, 400, "prompt", str(CONTEXT))
    r = strict.post("/v1/completions", json={"model": strict.model, "prompt": "word " * 4 * CONTEXT,
                                             "max_tokens": 1})
    expect_error(r, 400, "prompt", str(CONTEXT))
    # A prompt that fits, with max_tokens that does not fit beside it.
    r = strict.post("/v1/completions", json={"model": strict.model, "prompt": list(range(3, 3 + CONTEXT - 10)),
                                             "max_tokens": 20})
    expect_error(r, 400, "max_tokens")
    still_serves(strict)


@pytest.mark.parametrize("max_tokens,words", [(0, ["at least 1"]), (-5, ["at least 1"]),
                                              (TOKENS_LIMIT + 1, ["limit", str(TOKENS_LIMIT)])])
def test_max_tokens_out_of_range(strict, max_tokens, words):
    r = strict.post("/v1/completions", json={"model": strict.model, "prompt": "hi", "max_tokens": max_tokens})
    expect_error(r, 400, "max_tokens", *words)


def test_invalid_utf8(strict):
    expect_error(post_raw(strict, "/v1/completions", b'{"prompt": "caf\xc3(", "max_tokens": 1}'),
                 400, "UTF-8")
    expect_error(post_raw(strict, "/v1/chat/completions",
                          b'{"messages": [{"role": "user", "content": "\xff"}]}'), 400, "UTF-8")
    # A lone surrogate in a JSON escape names no character either.
    expect_error(post_raw(strict, "/v1/completions", b'{"prompt": "a\\udc80b"}'), 400, "surrogate")
    still_serves(strict)


def test_token_ids_outside_the_vocabulary(strict):
    r = strict.post("/v1/completions", json={"model": strict.model, "prompt": [1, 2, 10**6], "max_tokens": 1})
    expect_error(r, 400, "vocabulary")


def test_oversized_body(strict):
    body = json.dumps({"model": strict.model, "prompt": "x" * (BODY_LIMIT * 2), "max_tokens": 1})
    r = post_raw(strict, "/v1/completions", body.encode())
    expect_error(r, 413, str(BODY_LIMIT))
    still_serves(strict)


def test_unknown_route(strict):
    expect_error(strict.get("/v1/engines"), 404, "/v1/engines")


def test_more_requests_than_allowed_get_429_and_the_others_finish(start_server):
    # One request runs, one waits for it (--max-running 1), and a third finds both slots taken
    # (--max-requests 2). The first two are long: the third comes while they are in flight.
    busy = start_server("--max-requests", "2", "--max-running", "1")
    body = {"model": busy.model, "prompt": "go", "max_tokens": 500, "temperature": 0,
            "ignore_eos": True, "stream": True}

    def stream(results):
        r = busy.stream("/v1/completions", body)
        results.append((r.status, r.read().decode()))
        r.connection_to_close.close()

    for attempt in range(3):
        results = []
        threads = [threading.Thread(target=stream, args=(results,)) for _ in range(2)]
        for t in threads:
            t.start()
        while busy.metrics()["trident_requests_in_flight"] < 2 and not results:
            time.sleep(0.002)
        extra = busy.post("/v1/completions", json={**body, "stream": False})
        for t in threads:
            t.join(CLIENT_TIMEOUT)
        assert [status for status, _ in results] == [200, 200]
        assert all(text.endswith("data: [DONE]\n\n") for _, text in results)
        if extra.status_code != 200:
            break
    expect_error(extra, 429, "2 requests")
    still_serves(busy)


def test_bad_requests_leave_a_stream_in_flight_untouched(strict):
    body = {"model": strict.model, "prompt": "It is a truth universally acknowledged",
            "max_tokens": TOKENS_LIMIT, "temperature": 0, "ignore_eos": True}
    alone = strict.post("/v1/completions", json=body).json()["choices"][0]["text"]
    r = strict.stream("/v1/completions", {**body, "stream": True})
    first = r.readline()
    assert first.startswith(b"data: ")
    bad = [post_raw(strict, "/v1/completions", b'{"prompt": '),
           strict.post("/v1/completions", json={**body, "max_tokens": "many"}),
           strict.post("/v1/completions", json={**body, "model": "gpt-17"}),
           strict.post("/v1/completions", json={**body, "prompt": list(range(3, 3 + 2 * CONTEXT))}),
           strict.post("/v1/completions", json={**body, "max_tokens": 0}),
           post_raw(strict, "/v1/completions", b'{"prompt": "\xff\xfe"}'),
           post_raw(strict, "/v1/completions", b'{"prompt": "' + b"x" * 2 * BODY_LIMIT + b'"}')]
    assert all(400 <= b.status_code < 500 for b in bad), [b.status_code for b in bad]
    rest = r.read().decode()
    r.connection_to_close.close()
    events = [e[len("data: "):] for e in (first.decode() + rest).split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == alone


def test_a_request_that_cannot_start_in_time_gets_503_and_the_running_one_finishes(start_server):
    # One request runs at a time and none may wait more than 0.3 s to start.
    busy = start_server("--max-running", "1", "--max-queue-seconds", "0.3")
    body = {"model": busy.model, "prompt": "It is a truth", "max_tokens": 200, "temperature": 0,
            "ignore_eos": True}
    running = busy.stream("/v1/completions", {**body, "stream": True})
    assert running.readline().startswith(b"data: {")
    err = expect_error(busy.post("/v1/completions", json=body), 503, "queue", "0.3")
    assert err["code"] == "queue_timeout"
    assert running.read().decode().endswith("data: [DONE]\n\n")
    running.connection_to_close.close()
    assert busy.metrics()['trident_requests_finished_total{finish_reason="timeout"}'] == 1
    still_serves(busy)


def test_garbage_on_the_socket_does_not_hurt(strict):
    with socket.create_connection((strict.host, strict.port), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(b"\x00\x01 NOT HTTP \r\n\r\n")
        s.recv(4096)
    still_serves(strict)
