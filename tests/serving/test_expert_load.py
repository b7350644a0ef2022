"""The expert load balancer while serving: /metrics shows the routed experts' load a few series
per layer, GET /expert_load gives the counts (what `trident eplb` reads), and `serve --ep 2
--eplb-interval N` moves experts between steps, also when asked (POST /admin/rebalance_experts),
while requests run: every request ends with the text one rank gives."""

import concurrent.futures
import json

import pytest

from conftest import CLIENT_TIMEOUT, Server
from test_expert_parallel import built_without_mpi, complete

N_REQUESTS = 8
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def one(binary, model_dir):
    s = Server(binary, model_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def moving(binary, model_dir):
    if built_without_mpi():
        pytest.skip("this build has no MPI: --ep runs one rank only")
    s = Server(binary, model_dir, "--ep", "2", "--ep-redundant-experts", "2", "--eplb-interval", "3")
    yield s
    s.stop()


def test_one_rank_counts_top_k_experts_per_token_in_every_moe_layer(one, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    before = json.loads(one.get("/expert_load").text)
    assert before["format"] == "trident-expert-load-v1"
    complete(one, 0, stream=False)
    after = json.loads(one.get("/expert_load").text)
    k = config["num_experts_per_tok"]
    tokens = after["tokens"] - before["tokens"]
    assert tokens >= MAX_TOKENS
    assert [l["layer"] for l in after["layers"]] == list(
        range(config["first_k_dense_replace"], config["num_hidden_layers"]))
    for b, a in zip(before["layers"], after["layers"]):
        assert len(a["counts"]) == config["n_routed_experts"]
        assert sum(a["counts"]) - sum(b["counts"]) == tokens * k
    m = one.metrics()
    assert m["trident_moe_tokens_total"] == after["tokens"]
    assert m["trident_expert_routed_tokens_total"] == sum(sum(l["counts"]) for l in after["layers"])
    per_layer = [v for name, v in m.items() if name.startswith("trident_expert_load_imbalance{")]
    assert len(per_layer) == len(after["layers"]) and all(v >= 1 for v in per_layer)
    # One rank holds every expert: nothing to move, and the server says so.
    r = one.post("/admin/rebalance_experts")
    assert r.status_code == 409 and "one rank" in r.json()["error"]["message"], r.text


def test_experts_move_while_requests_run_and_every_text_is_one_rank_s(one, moving):
    alone = [complete(one, i, stream=False) for i in range(N_REQUESTS)]
    with concurrent.futures.ThreadPoolExecutor(N_REQUESTS) as pool:
        spread = list(pool.map(lambda i: complete(moving, i, stream=i % 2 == 0),
                               range(N_REQUESTS), timeout=CLIENT_TIMEOUT * 2))
    assert spread == alone
    m = moving.metrics()
    assert m["trident_eplb_rebalances_total"] >= 1, moving.logs()
    assert m["trident_eplb_experts_moved_total"] >= 1
    assert len([n for n in m if n.startswith("trident_expert_rank_load_imbalance{")]) > 0
    assert "expert copies moved" in moving.logs()


def test_a_rebalance_on_request_comes_between_two_steps_and_keeps_the_text(one, moving):
    before = moving.metrics()["trident_eplb_rebalances_total"]
    r = moving.post("/admin/rebalance_experts")
    assert r.status_code == 202, r.text
    # The next steps run the request; the rebalance comes before the first of them.
    assert complete(moving, 5, stream=True) == complete(one, 5, stream=False)
    load = json.loads(moving.get("/expert_load").text)
    assert load["tokens"] > 0
    assert moving.metrics()["trident_eplb_rebalances_total"] >= before
    # Applied, or kept when no better: the log says which.
    assert "(requested): " in moving.logs(), moving.logs()
