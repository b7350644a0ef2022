"""curl against `trident serve`: plain and streamed completions, chat, and the GET endpoints."""

import json
import subprocess

from conftest import CLIENT_TIMEOUT


def curl(server, path, body=None, *extra):
    cmd = ["curl", "-sS", "-N", "--max-time", str(CLIENT_TIMEOUT), "-w", "\n%{http_code}",
           *extra, server.url + path]
    if body is not None:
        cmd[1:1] = ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT + 10)
    assert out.returncode == 0, out.stderr
    text, status = out.stdout.rsplit("\n", 1)
    return int(status), text


def sse_payloads(text):
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_health_and_models(server):
    assert curl(server, "/health")[0] == 200
    status, text = curl(server, "/v1/models")
    assert status == 200
    assert json.loads(text)["data"][0]["id"] == server.model


def test_listens_on_loopback_only_by_default(server):
    assert server.host == "127.0.0.1"
    # The listening socket in the kernel's table: bound to 127.0.0.1, not to every address.
    listening = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if int(port, 16) == server.port and state == "0A":
            listening.append(address)
    assert listening == ["0100007F"], listening


def test_completion(server):
    status, text = curl(server, "/v1/completions", {"model": server.model, "prompt": "Hello",
                                                    "max_tokens": 5, "temperature": 0,
                                                    "ignore_eos": True})
    assert status == 200, text
    r = json.loads(text)
    assert r["usage"]["completion_tokens"] == 5
    assert r["choices"][0]["finish_reason"] == "length"


def test_streamed_completion_is_server_sent_events(server):
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 6, "temperature": 0,
            "ignore_eos": True}
    status, whole = curl(server, "/v1/completions", body)
    status, text = curl(server, "/v1/completions", {**body, "stream": True,
                                                    "stream_options": {"include_usage": True}})
    assert status == 200
    chunks = sse_payloads(text)
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
        json.loads(whole)["choices"][0]["text"]


def test_streamed_chat(server):
    status, text = curl(server, "/v1/chat/completions", {
        "model": server.model, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "temperature": 0, "stream": True})
    assert status == 200
    chunks = sse_payloads(text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_metrics_is_prometheus_text(server):
    status, text = curl(server, "/metrics")
    assert status == 200
    assert "# TYPE trident_time_to_first_token_seconds histogram" in text
    assert "trident_kv_fragmentation_ratio" in text
