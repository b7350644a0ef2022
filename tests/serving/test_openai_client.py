"""The official `openai` package against `trident serve`: completions, chat, streaming, sampling
parameters, stop strings, logprobs and the API key."""

import openai
import pytest

from conftest import CLIENT_TIMEOUT


def client(server, api_key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, timeout=CLIENT_TIMEOUT,
                         max_retries=0)


PROMPT = "The quick brown fox"


def test_models_lists_the_served_model(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [server.model]


def test_completion_returns_text_usage_and_finish_reason(server):
    r = client(server).completions.create(model=server.model, prompt=PROMPT, max_tokens=12,
                                          temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert isinstance(r.choices[0].text, str)


def test_streamed_completion_gives_the_same_text_as_a_whole_one(server):
    c = client(server)
    whole = c.completions.create(model=server.model, prompt=PROMPT, max_tokens=16, temperature=0)
    chunks = list(c.completions.create(model=server.model, prompt=PROMPT, max_tokens=16,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_completion_and_its_stream_agree(server):
    c = client(server)
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say something."}]
    whole = c.chat.completions.create(model=server.model, messages=messages, max_tokens=16,
                                      temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    stream = c.chat.completions.create(model=server.model, messages=messages, max_tokens=16,
                                       temperature=0, stream=True)
    deltas = [ch.choices[0].delta for ch in stream if ch.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content


def test_the_chat_template_is_applied(server):
    # DeepSeek-V3's template: BOS, the system prompt, then <｜User｜>...<｜Assistant｜>. A plain
    # completion of that text (which gets BOS too) is the same prompt, so it gives the same text.
    c = client(server)
    chat = c.chat.completions.create(model=server.model, max_tokens=20, temperature=0,
                                     messages=[{"role": "system", "content": "You are terse."},
                                               {"role": "user", "content": "Who is Mr. Darcy?"}])
    plain = c.completions.create(model=server.model, max_tokens=20, temperature=0,
                                 prompt="You are terse.<｜User｜>Who is Mr. Darcy?<｜Assistant｜>")
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
    assert chat.choices[0].message.content == plain.choices[0].text
    bare = c.completions.create(model=server.model, prompt="Who is Mr. Darcy?", max_tokens=1)
    assert chat.usage.prompt_tokens > bare.usage.prompt_tokens


def test_same_seed_same_sample_and_top_k_one_is_greedy(server):
    c = client(server)
    kw = dict(model=server.model, prompt=PROMPT, max_tokens=16, extra_body={"ignore_eos": True})
    a = c.completions.create(temperature=1.0, top_p=0.9, seed=7, **kw)
    b = c.completions.create(temperature=1.0, top_p=0.9, seed=7, **kw)
    assert a.choices[0].text == b.choices[0].text
    others = {c.completions.create(temperature=1.0, top_p=0.9, seed=s, **kw).choices[0].text
              for s in (8, 9)}
    assert others != {a.choices[0].text}, "the seed changes nothing"
    greedy = c.completions.create(temperature=0, **kw)
    top1 = c.completions.create(temperature=1.5, seed=3, extra_body={"ignore_eos": True, "top_k": 1},
                                model=server.model, prompt=PROMPT, max_tokens=16)
    assert top1.choices[0].text == greedy.choices[0].text


def test_stop_string_cuts_the_text_before_it(server):
    c = client(server)
    full = c.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0,
                                extra_body={"ignore_eos": True}).choices[0].text
    # A random model's text may hold bytes that are not UTF-8 (shown as U+FFFD): pick a stop
    # string of real characters from the middle.
    starts = [i for i in range(2, len(full) - 1) if "\ufffd" not in full[i:i + 2]]
    assert starts, f"too little text to pick a stop string from: {full!r}"
    stop = full[starts[0]:starts[0] + 2]
    cut = full[:full.index(stop)]
    for stream in (False, True):
        r = c.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0,
                                 stop=[stop], stream=stream, extra_body={"ignore_eos": True})
        if stream:
            chunks = [ch.choices[0] for ch in r if ch.choices]
            text = "".join(ch.text for ch in chunks)
            reason = chunks[-1].finish_reason
        else:
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == cut, f"stream={stream}"
        assert reason == "stop"


def test_completion_logprobs_list_the_top_alternatives(server):
    r = client(server).completions.create(model=server.model, prompt=PROMPT, max_tokens=5,
                                          temperature=0, logprobs=3,
                                          extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert token_lp <= 0
        assert 1 <= len(top) <= 3
        # Greedy: the chosen token is the most likely one.
        assert max(top.values()) == pytest.approx(token_lp, abs=1e-5)
    assert lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_have_bytes_and_top_logprobs(server):
    r = client(server).chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)
        assert isinstance(entry.bytes, list)


def test_api_key_is_required_when_set(start_server):
    s = start_server("--api-key", "sekret")
    with pytest.raises(openai.AuthenticationError) as e:
        client(s, "wrong").completions.create(model=s.model, prompt="x", max_tokens=1)
    assert "API key" in str(e.value)
    r = s.post("/v1/completions", json={"model": s.model, "prompt": "x", "max_tokens": 1})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    r = client(s, "sekret").completions.create(model=s.model, prompt="x", max_tokens=1)
    assert r.usage.completion_tokens == 1
    # Health and metrics stay open to probes.
    assert s.get("/health").status_code == 200
