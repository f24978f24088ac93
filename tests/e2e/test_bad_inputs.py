"""Bad requests get the contract's codes (never INTERNAL/UNKNOWN) and the server stays up."""

import pytest

from conftest import grpc_code, wait_for

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def info(py):
    return py.info()


def _sampling_cases(info):
    vocab = info.model.vocab_size
    limits = info.limits
    return [
        ("temperature -1", dict(temperature=-1.0), ["--temperature", "-1"]),
        ("temperature 101", dict(temperature=101.0), ["--temperature", "101"]),
        ("temperature nan", dict(temperature=float("nan")), ["--temperature", "nan"]),
        ("top_p 0", dict(top_p=0.0), ["--top-p", "0"]),
        ("top_p 1.5", dict(top_p=1.5), ["--top-p", "1.5"]),
        ("top_k -1", dict(top_k=-1), ["--top-k", "-1"]),
        ("top_k > vocab", dict(top_k=vocab + 1), ["--top-k", str(vocab + 1)]),
        ("max_tokens 0", dict(max_tokens=0), ["--max-tokens", "0"]),
        ("max_tokens > limit", dict(max_tokens=limits.max_tokens + 1),
         ["--max-tokens", str(limits.max_tokens + 1)]),
        ("top_logprobs > limit", dict(top_logprobs=limits.max_top_logprobs + 1),
         ["--top-logprobs", str(limits.max_top_logprobs + 1)]),
        ("too many stops", dict(stop=["x"] * (limits.max_stop_sequences + 1)),
         sum((["--stop", "x"] for _ in range(limits.max_stop_sequences + 1)), [])),
    ]


def test_out_of_range_sampling_values_are_invalid_argument(py, ctl, info):
    for name, kwargs, flags in _sampling_cases(info):
        code, message = grpc_code(py.generate, PROMPT, **kwargs)
        assert code == "INVALID_ARGUMENT", (name, code, message)
        code, message = grpc_code(py.stream, PROMPT, **kwargs)
        assert code == "INVALID_ARGUMENT", (name, code, message)
        code, message = ctl.error("generate", PROMPT, *flags)
        assert code == "INVALID_ARGUMENT", (name, message)


def test_an_empty_prompt_is_invalid_argument(py, ctl):
    assert grpc_code(py.generate, "")[0] == "INVALID_ARGUMENT"
    assert grpc_code(py.stream, "")[0] == "INVALID_ARGUMENT"
    code, message = ctl.error("generate", "")
    assert code == "INVALID_ARGUMENT" and "prompt" in message
    assert ctl.error("score", "", "-c", "x")[0] == "INVALID_ARGUMENT"


def test_a_prompt_longer_than_the_context_is_invalid_argument(py, info):
    n = info.model.context_length
    assert grpc_code(py.generate, "", prompt_token_ids=[1] * (n + 1), add_special_tokens=False)[0] == \
        "INVALID_ARGUMENT"
    assert grpc_code(py.generate, "hello " * (2 * n))[0] == "INVALID_ARGUMENT"


def test_token_ids_outside_the_vocabulary_are_invalid_argument(py, ctl, info):
    vocab = info.model.vocab_size
    assert grpc_code(py.generate, "", prompt_token_ids=[vocab])[0] == "INVALID_ARGUMENT"
    assert grpc_code(py.generate, "", prompt_token_ids=[-1])[0] == "INVALID_ARGUMENT"
    assert ctl.error("generate", "--prompt-ids", str(vocab))[0] == "INVALID_ARGUMENT"


def test_an_unknown_adapter_is_not_found(py, ctl):
    assert grpc_code(py.generate, PROMPT, adapter="no-such-adapter")[0] == "NOT_FOUND"
    assert grpc_code(py.stream, PROMPT, adapter="no-such-adapter")[0] == "NOT_FOUND"
    assert grpc_code(py.score, PROMPT, ["x"], adapter="no-such-adapter")[0] == "NOT_FOUND"
    assert ctl.error("generate", PROMPT, "--adapter", "no-such-adapter@3")[0] == "NOT_FOUND"


def test_bad_score_requests_are_invalid_argument(py):
    assert grpc_code(py.score, PROMPT, [])[0] == "INVALID_ARGUMENT"
    assert grpc_code(py.score, PROMPT, [""])[0] == "INVALID_ARGUMENT"
    assert grpc_code(py.score, PROMPT, ["x"], top_logprobs=-1)[0] == "INVALID_ARGUMENT"


def test_a_message_over_the_size_limit_is_resource_exhausted(py, info):
    big = "a" * (info.limits.max_message_bytes + 1)
    assert grpc_code(py.generate, big)[0] == "RESOURCE_EXHAUSTED"


def test_the_server_is_still_serving_after_the_bad_inputs(server, py):
    assert server.alive()
    r = py.generate(PROMPT, max_tokens=3, ignore_eos=True)
    assert r.usage.completion_tokens == 3
    # The engine's counters follow a request's end by up to a step.
    assert wait_for(lambda: py.stats().running == 0, timeout=5.0), py.stats()
