"""`trident bench serve` loads a running server and reports throughput and latency percentiles."""

import json
import subprocess

from conftest import CLIENT_TIMEOUT


def bench(binary, server, tmp_path, *args):
    out = tmp_path / "bench.json"
    p = subprocess.run([binary, "bench", "serve", "--host", server.host, "--port", str(server.port),
                        "--output-json", str(out), *args],
                       capture_output=True, text=True, timeout=CLIENT_TIMEOUT * 3)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout, json.loads(out.read_text())


def test_fixed_concurrency_random_prompts(binary, server, tmp_path):
    table, r = bench(binary, server, tmp_path, "--num-prompts", "12", "--random-input-len", "40",
                     "--random-output-len", "10", "--max-concurrency", "4", "--seed", "1")
    assert r["completed"] == 12 and r["failed"] == 0
    assert r["total_output_tokens"] == 12 * 10  # ignore_eos: exactly max_tokens each
    assert r["total_input_tokens"] == 12 * 40
    assert r["output_throughput"] > 0 and r["request_throughput"] > 0
    for part in ("ttft", "tpot", "itl", "e2e_latency"):
        assert 0 < r[part]["median_ms"] <= r[part]["p99_ms"], part
    assert r["concurrency"] <= 4.01
    for words in ("Successful requests:", "Output token throughput", "Median TTFT (ms):", "P99 TPOT"):
        assert words in table


def test_random_lengths_within_the_range_ratio(binary, server, tmp_path):
    n, input_len, output_len = 10, 60, 12
    _, r = bench(binary, server, tmp_path, "--num-prompts", str(n), "--random-input-len",
                 str(input_len), "--random-output-len", str(output_len), "--random-range-ratio",
                 "0.25", "--max-concurrency", "5", "--seed", "2")
    assert r["completed"] == n
    # Lengths are uniform in [len/4, len]: the totals fall strictly between the extremes.
    assert n * input_len // 4 <= r["total_input_tokens"] < n * input_len
    assert n * output_len // 4 <= r["total_output_tokens"] < n * output_len


def test_request_rate_and_a_prompt_file(binary, server, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('hello there\n{"prompt": "a line of json", "max_tokens": 3}\n')
    _, r = bench(binary, server, tmp_path, "--dataset", str(prompts), "--num-prompts", "6",
                 "--request-rate", "40", "--random-output-len", "5", "--endpoint", "chat")
    assert r["completed"] == 6
    assert r["request_rate"] == 40
    assert r["total_output_tokens"] == 3 * 5 + 3 * 3


def test_a_burst_of_connections_is_all_served(binary, server, tmp_path):
    # 150 clients connect at the same moment: more than a shallow listen queue holds.
    _, r = bench(binary, server, tmp_path, "--num-prompts", "150", "--random-input-len", "16",
                 "--random-output-len", "4")
    assert r["failed"] == 0, r.get("first_error")
    assert r["completed"] == 150
