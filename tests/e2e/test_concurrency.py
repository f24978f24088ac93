"""Several clients at once; cancellation and deadlines free the engine's slots."""

import json
import subprocess
import threading

from conftest import ADAPTERCTL_BIN, grpc_code, start_server, wait_for

PROMPTS = [f"Story number {i}: once upon a time" for i in range(6)]


def test_concurrent_streams_equal_their_solo_outputs(py):
    solo = [[t.id for t in py.generate(p, max_tokens=32, ignore_eos=True).tokens] for p in PROMPTS]
    results = [None] * len(PROMPTS)
    errors = []
    start = threading.Barrier(len(PROMPTS))

    def run(i):
        try:
            start.wait()
            results[i] = [t.id for c in py.stream(PROMPTS[i], max_tokens=32, ignore_eos=True)
                          for t in c.tokens]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == solo


def test_concurrent_adapterctl_processes_get_their_own_outputs(server, ctl, py):
    solo = [[t.id for t in py.generate(p, max_tokens=16, ignore_eos=True).tokens] for p in PROMPTS[:3]]
    procs = [subprocess.Popen([ADAPTERCTL_BIN, "--target", server.target, "--json", "generate", p,
                               "--max-tokens", "16", "--ignore-eos"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in PROMPTS[:3]]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out)["token_ids"])
    assert outs == solo


def _long_request_tokens(py):
    info = py.info()
    return max(1, min(info.limits.max_tokens, info.model.context_length - 32))


def test_a_cancelled_stream_frees_its_slot(tmp_path, client_module):
    # Its own server with a context of 4096 tokens: the request runs for seconds, so the
    # cancel always lands mid-generation (the shared server's 128-token context let a
    # loaded machine finish the request first).
    s = start_server(tmp_path=tmp_path, extra_args=["--max-context", "4096"])
    try:
        with client_module.AdapterdClient(s.target) as py:
            before = py.stats()
            stream = py.stream("Tell me everything", max_tokens=_long_request_tokens(py),
                               ignore_eos=True)
            first = next(stream)
            assert first.finish_reason == 0
            stream.cancel()
            assert wait_for(lambda: py.stats().running == 0, timeout=5.0), py.stats()
            assert wait_for(lambda: py.stats().requests_cancelled > before.requests_cancelled,
                            timeout=5.0)
    finally:
        assert s.stop() == 0, s.log


def test_a_passed_deadline_is_deadline_exceeded_and_frees_the_slot(server, client_module, py):
    n = _long_request_tokens(py)
    with client_module.AdapterdClient(server.target, timeout=0.005) as hurried:
        code, _ = grpc_code(hurried.generate, "Tell me everything", max_tokens=n, ignore_eos=True)
        assert code == "DEADLINE_EXCEEDED"
        code, _ = grpc_code(hurried.stream, "Tell me everything", max_tokens=n, ignore_eos=True)
        assert code == "DEADLINE_EXCEEDED"
    assert wait_for(lambda: py.stats().running == 0, timeout=5.0), py.stats()
    assert py.generate("still alive", max_tokens=2).usage.completion_tokens == 2
