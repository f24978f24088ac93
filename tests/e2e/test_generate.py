"""Generation through the real server: reference outputs, stream vs unary, both clients."""

import json
import math
import os

import pytest

from conftest import model_dir, needs_real_engine, start_server

PROMPT = "The quick brown fox"


def ids_of(response):
    return [t.id for t in response.tokens]


def test_info_describes_the_served_model(server, ctl, py):
    info = ctl.json("info")
    assert info["version"]
    assert info["model"]["vocab_size"] > 0
    assert info["model"]["context_length"] > 0
    assert info["model"]["architecture"] in ("llama", "gpt2")
    assert info["limits"]["max_tokens"] > 0
    assert info["model"]["is_default_model"] is False
    assert py.info().model.fingerprint == info["model"]["fingerprint"]


def _reference(name):
    path = os.path.join(model_dir(name), "reference.json")
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    with open(path) as f:
        return json.load(f)


@needs_real_engine
def test_greedy_generation_matches_the_reference(server, ctl, py):
    ref = _reference("llama")
    n = ref["max_new_tokens"]
    for prompt, expected in zip(ref["prompts"], ref["generations"]):
        r = py.generate("", prompt_token_ids=prompt, max_tokens=n, temperature=0.0, ignore_eos=True,
                        add_special_tokens=False)
        assert ids_of(r) == expected, f"prompt {prompt}"
        assert r.usage.completion_tokens == n
        out = ctl.json("generate", "--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", n,
                       "--ignore-eos", "--no-special-tokens")
        assert out["token_ids"] == expected


@needs_real_engine
@pytest.mark.parametrize("name", ["gpt2", "qwen2", "mistral_sw", "llama_tied_rope3", "llama_sharded"])
def test_other_fixture_models_match_their_reference(name, client_module, tmp_path):
    ref = _reference(name)
    s = start_server(model=name, tmp_path=tmp_path)
    try:
        with client_module.AdapterdClient(s.target) as py:
            n = ref["max_new_tokens"]
            for prompt, expected in zip(ref["prompts"], ref["generations"]):
                r = py.generate("", prompt_token_ids=prompt, max_tokens=n, ignore_eos=True,
                                add_special_tokens=False)
                assert ids_of(r) == expected, f"{name}: prompt {prompt}"
    finally:
        assert s.stop() == 0, s.log


def test_stream_equals_unary_and_ends_with_the_finish_reason(py):
    unary = py.generate(PROMPT, max_tokens=24, ignore_eos=True)
    assert unary.usage.completion_tokens == len(unary.tokens)
    assert unary.usage.prompt_tokens > 0
    chunks = list(py.stream(PROMPT, max_tokens=24, ignore_eos=True))
    assert chunks
    assert [t.id for c in chunks for t in c.tokens] == ids_of(unary)
    assert "".join(c.text for c in chunks) == unary.text
    for c in chunks[:-1]:
        assert c.finish_reason == 0 and not c.HasField("usage")
    assert chunks[-1].finish_reason == unary.finish_reason != 0
    assert chunks[-1].usage == unary.usage
    assert len({c.request_id for c in chunks}) == 1


def test_adapterctl_and_the_python_client_agree(ctl, py):
    unary = py.generate(PROMPT, max_tokens=16, ignore_eos=True)
    out = ctl.json("generate", PROMPT, "--max-tokens", 16, "--ignore-eos")
    assert out["token_ids"] == ids_of(unary)
    assert out["text"] == unary.text
    assert out["finish_reason"] == py.finish_reason_name(unary.finish_reason)
    assert out["usage"]["completion_tokens"] == 16
    lines = ctl.jsonl("stream", PROMPT, "--max-tokens", 16, "--ignore-eos")
    assert [i for line in lines for i in line["token_ids"]] == ids_of(unary)
    assert "finish_reason" in lines[-1] and all("finish_reason" not in l for l in lines[:-1])
    # The prompt from standard input.
    from_stdin = ctl.json("generate", "-", "--max-tokens", 16, "--ignore-eos", input=PROMPT)
    assert from_stdin["token_ids"] == ids_of(unary)


def test_request_ids_are_echoed_or_made(py, ctl):
    assert py.generate(PROMPT, max_tokens=2, request_id="e2e-1").request_id == "e2e-1"
    assert py.generate(PROMPT, max_tokens=2).request_id
    assert ctl.json("generate", PROMPT, "--max-tokens", 2, "--request-id", "e2e-2")["request_id"] == "e2e-2"


def test_logprobs_are_returned_when_asked_for(py):
    r = py.generate(PROMPT, max_tokens=4, logprobs=True, top_logprobs=3)
    for t in r.tokens:
        assert t.HasField("logprob") and t.logprob <= 0.0
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token_id == t.id
    assert not py.generate(PROMPT, max_tokens=2).tokens[0].HasField("logprob")


def test_seeded_sampling_is_reproducible(py):
    a = py.generate(PROMPT, max_tokens=16, temperature=1.0, top_k=20, seed=42, ignore_eos=True)
    b = py.generate(PROMPT, max_tokens=16, temperature=1.0, top_k=20, seed=42, ignore_eos=True)
    assert ids_of(a) == ids_of(b)


def test_score_returns_a_log_probability_per_continuation(py, ctl):
    r = py.score(PROMPT, [" jumps", " over the lazy dog"])
    assert len(r.scores) == 2
    for s in r.scores:
        assert s.tokens
        assert s.logprob <= 0.0
        assert math.isclose(s.logprob, sum(t.logprob for t in s.tokens), rel_tol=1e-4, abs_tol=1e-4)
    out = ctl.json("score", PROMPT, "-c", " jumps", "-c", " over the lazy dog")
    assert [s["token_ids"] for s in out["scores"]] == [[t.id for t in s.tokens] for s in r.scores]
    for a, b in zip(out["scores"], r.scores):
        assert math.isclose(a["logprob"], b.logprob, rel_tol=1e-5, abs_tol=1e-5)


@needs_real_engine
def test_greedy_output_scores_as_greedy(py):
    prompt_ids = [5, 17, 42, 99, 7]
    g = py.generate("", prompt_token_ids=prompt_ids, max_tokens=6, ignore_eos=True,
                    logprobs=True, top_logprobs=2)
    r = py.score_ids(prompt_ids, [ids_of(g), ids_of(g)[:-1] + [(ids_of(g)[-1] + 1) % 100]],
                     top_logprobs=2)
    assert [t.id for t in r.scores[0].tokens] == ids_of(g)
    assert r.scores[0].is_greedy
    assert not r.scores[1].is_greedy
    for scored, generated in zip(r.scores[0].tokens, g.tokens):
        assert math.isclose(scored.logprob, generated.logprob, rel_tol=1e-4, abs_tol=1e-4)
        assert scored.top_logprobs[0].token_id == generated.id
        assert scored.top_logprobs[0].text == generated.top_logprobs[0].text
    assert r.scores[1].logprob < r.scores[0].logprob