"""Adapter methods through the real server: --adapter at start-up, concurrent
requests for different adapters (each returns its reference library's greedy
output), selection by name[@version], prompt ensembling, merge, and bad
adapters at start-up. Fixtures: scripts/fixtures/make_adapters.py (CTest
fixture `adapters`)."""

import json
import math
import os
import threading

import pytest

from conftest import FIXTURES_DIR, Ctl, ServerProcess, grpc_code, model_dir, needs_real_engine, start_server

pytestmark = needs_real_engine

# Served together on the llama fixture: one of each method family.
ADAPTERS = ["lora_dora", "lora_all_rslora_patterns", "prefix", "p_tuning", "prompt_tuning",
            "prompt_tuning1", "prompt_tuning2", "houlsby", "fusion"]


def adapter_dir(base, name):
    path = os.path.join(FIXTURES_DIR, "adapters", base, name)
    if not FIXTURES_DIR or not os.path.isdir(path):
        pytest.skip(f"fixture adapter {path} missing (run the CTest fixture `adapters`)")
    return path


def reference(base, name):
    with open(os.path.join(adapter_dir(base, name), "reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory):
    model_dir("llama")
    args = []
    for name in ADAPTERS:
        args += ["--adapter", f"{name}={adapter_dir('llama', name)}"]
    s = start_server(args, tmp_path=tmp_path_factory.mktemp("data"))
    yield s
    assert s.alive(), f"adapterd died during the tests:\n{s.log}"
    assert s.stop() == 0, s.log


@pytest.fixture(scope="module")
def apy(adapter_server, client_module):
    c = client_module.AdapterdClient(adapter_server.target)
    yield c
    c.close()


def greedy(py, prompt, n, adapter="", ensemble=()):
    req = py.request("", prompt_token_ids=prompt, max_tokens=n, temperature=0.0, ignore_eos=True,
                     add_special_tokens=False, adapter=adapter)
    req.ensemble_adapters.extend(ensemble)
    r = py.inference.Generate(req, timeout=py.timeout, metadata=py.metadata)
    return [t.id for t in r.tokens]


def test_info_lists_the_loaded_adapters(apy):
    info = apy.info()
    methods = {a.name: a.method for a in info.adapters}
    assert methods["lora_dora"] == "lora"
    assert methods["prefix"] == "prefix_tuning"
    assert methods["p_tuning"] == "p_tuning"
    assert methods["prompt_tuning"] == "prompt_tuning"
    assert methods["houlsby"] == "bottleneck"
    assert methods["fusion"] == "fusion"


def test_concurrent_requests_return_each_adapters_reference_output(apy):
    jobs = []
    for name in ADAPTERS + [""]:
        if name:
            ref = reference("llama", name)
        else:
            with open(os.path.join(model_dir("llama"), "reference.json")) as f:
                base = json.load(f)
            ref = {"prompts": base["prompts"][:3],
                   "generations": [g[:8] for g in base["generations"][:3]]}
        for prompt, expected in zip(ref["prompts"], ref["generations"]):
            jobs.append((name, prompt, expected))
    results = [None] * len(jobs)

    def run(i):
        name, prompt, expected = jobs[i]
        results[i] = greedy(apy, prompt, len(expected), adapter=name)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for (name, prompt, expected), got in zip(jobs, results):
        assert got == expected, f"adapter {name or 'base'}: prompt {prompt}"
    # Different adapters really give different outputs (the test can fail).
    outputs = {name: tuple(r) for (name, p, e), r in zip(jobs, results) if p == jobs[0][1]}
    assert len(set(outputs.values())) > 1


def test_adapters_are_selected_by_name_and_version(apy):
    ref = reference("llama", "lora_dora")
    prompt, expected = ref["prompts"][0], ref["generations"][0]
    assert greedy(apy, prompt, len(expected), adapter="lora_dora@1") == expected
    code, details = grpc_code(apy.generate, "hi", adapter="lora_dora@2")
    assert code == "NOT_FOUND", details
    code, details = grpc_code(apy.generate, "hi", adapter="nope")
    assert code == "NOT_FOUND" and "nope" in details, details
    code, _ = grpc_code(apy.score, "hi", [" there"], adapter="nope")
    assert code == "NOT_FOUND"


def test_score_ensemble_is_the_mean_of_the_prompts_probabilities(apy):
    names = ["prompt_tuning", "prompt_tuning1", "prompt_tuning2"]
    prompt = reference("llama", names[0])["prompts"][0]
    conts = [prompt[:3], prompt[2:4]]
    singles = [apy.score_ids(prompt, conts, adapter=n) for n in names]
    req = apy.pb.ScoreRequest(prompt_token_ids=prompt, adapter=names[0],
                              continuation_token_ids=[apy.pb.TokenIds(ids=c) for c in conts])
    req.ensemble_adapters.extend(names[1:])
    ens = apy.inference.Score(req, timeout=apy.timeout)
    for c in range(len(conts)):
        total = 0.0
        for j in range(len(conts[c])):
            p = sum(math.exp(s.scores[c].tokens[j].logprob) for s in singles) / len(singles)
            assert abs(ens.scores[c].tokens[j].logprob - math.log(p)) < 1e-4
            total += math.log(p)
        assert abs(ens.scores[c].logprob - total) < 1e-3
    # Negative control: the ensemble differs from its first member alone.
    assert abs(ens.scores[0].logprob - singles[0].scores[0].logprob) > 1e-3


def test_generate_ensemble_follows_the_mean_distribution(apy):
    names = ["prompt_tuning", "prompt_tuning1", "prompt_tuning2"]
    prompt = reference("llama", names[0])["prompts"][1]
    out = greedy(apy, prompt, 6, adapter=names[0], ensemble=names[1:])
    assert len(out) == 6
    # Each greedy token is the argmax of the mean of the members' distributions.
    so_far = list(prompt)
    for tok in out:
        s = apy.pb.ScoreRequest(prompt_token_ids=so_far, adapter=names[0],
                                continuation_token_ids=[apy.pb.TokenIds(ids=[tok])], top_logprobs=1)
        s.ensemble_adapters.extend(names[1:])
        r = apy.inference.Score(s, timeout=apy.timeout)
        assert r.scores[0].is_greedy, f"token {tok} is not the ensemble's argmax"
        so_far.append(tok)


@pytest.mark.parametrize("bad,message", [
    ("nan_weights", "non-finite"),
    ("pickle_bin", "pickle"),
    ("unknown_peft_type", "SUPER_TUNING"),
    ("missing_config", "no adapter_config.json"),
])
def test_a_bad_adapter_fails_start_up_with_a_clear_message(bad, message, tmp_path):
    good = adapter_dir("llama", "lora")
    path = os.path.join(FIXTURES_DIR, "adapters", "bad", bad)
    s = ServerProcess(["--listen", "127.0.0.1:0", "--model", model_dir("llama"),
                       "--data-dir", str(tmp_path / "data"), "--adapter", f"good={good}",
                       "--adapter", f"broken={path}"], wait=False)
    rc = s.wait_exit(120)
    assert rc != 0, s.log
    assert s.target is None, "it must not start serving"
    assert "cannot load an adapter" in s.log and 'adapter "broken"' in s.log, s.log
    assert message in s.log, s.log


def test_merged_adapter_deployment_serves_only_that_adapter(client_module, tmp_path):
    ref = reference("llama", "lora_all_rslora_patterns")
    s = start_server(["--adapter", f"lora={adapter_dir('llama', 'lora_all_rslora_patterns')}",
                      "--merge-adapter", "lora"], tmp_path=tmp_path)
    try:
        with client_module.AdapterdClient(s.target) as py:
            assert py.info().merged_adapter == "lora"
            for prompt, expected in zip(ref["prompts"], ref["generations"]):
                assert greedy(py, prompt, len(expected), adapter="lora") == expected
            code, _ = grpc_code(py.generate, "hi")
            assert code == "FAILED_PRECONDITION"
    finally:
        assert s.stop() == 0, s.log


def test_an_adapter_fusion_and_a_p_tuning_adapter_upload_into_the_store_and_serve(adapter_server, apy):
    """The clients upload AdapterFusion's layout (its config and weights plus one subdirectory
    per fused adapter) and P-tuning's files; served from the store, each gives its reference
    library's greedy output, like the same adapter given at start-up."""
    ctl = Ctl(adapter_server.target)
    up = ctl.json("adapters", "upload", "fusion-ctl", adapter_dir("llama", "fusion"), "--quiet")
    assert up["method"] == "fusion"
    assert sorted(f["name"] for f in up["files"]) == [
        "adapter_fusion_config.json", "fa/adapter.safetensors", "fa/adapter_config.json",
        "fb/adapter.safetensors", "fb/adapter_config.json", "model_adapter_fusion.safetensors"]
    info = apy.upload_adapter("fusion-py", adapter_dir("llama", "fusion"))
    assert info.method == "fusion" and len(info.files) == 6
    assert apy.upload_adapter("p-tuning-py", adapter_dir("llama", "p_tuning")).method == "p_tuning"
    for stored, fixture in (("fusion-ctl", "fusion"), ("fusion-py", "fusion"),
                            ("p-tuning-py", "p_tuning")):
        ref = reference("llama", fixture)
        for prompt, expected in zip(ref["prompts"], ref["generations"]):
            assert greedy(apy, prompt, len(expected), adapter=stored) == expected, (stored, prompt)
