"""Store adapters served through the engine's loaded-adapter cache, end to end:
upload → generate → publish v2 (new requests get v2 while a long stream started
on v1 finishes on v1, even with v1 deleted under it) → delete → NOT_FOUND;
a restart keeps the registry; Load/Unload pin and report residency; and 1,000
registered adapters behind a device tier that holds 16, requested with zipf
popularity, each answer equal to that adapter run alone (as a start-up
adapter, a different code path), none failing, the budget never exceeded.
"""

import json
import os
import random
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import FIXTURES_DIR, Ctl, grpc_code, needs_real_engine, start_server, wait_for

pytestmark = needs_real_engine

PROMPT = "The cache"


def fixture_adapter(name):
    path = os.path.join(FIXTURES_DIR, "adapters", "llama", name)
    if not FIXTURES_DIR or not os.path.isdir(path):
        pytest.skip(f"fixture adapter {path} missing (run the CTest fixture `adapters`)")
    return path


def ids(resp):
    return [t.id for t in resp.tokens]


def greedy(py, adapter="", n=8, **kw):
    return py.generate(PROMPT, adapter=adapter, max_tokens=n, ignore_eos=True, **kw)


@pytest.fixture
def client(client_module):
    def make(server):
        return client_module.AdapterdClient(server.target)
    return make


def test_publish_swap_delete_and_restart(tmp_path, client):
    data = tmp_path / "data"
    s = start_server(tmp_path=data, extra_args=["--max-context", "4096"])
    py = client(s)
    base = ids(greedy(py))
    v1 = py.upload_adapter("task", fixture_adapter("lora"))
    assert (v1.version, v1.method) == (1, "lora")
    assert v1.base_model_fingerprint == py.info().model.fingerprint  # The engine validated it.
    r1 = greedy(py, "task")
    assert r1.adapter == "task@1"
    assert ids(r1) != base, "negative control: the adapter must change the output"

    # A long stream on v1, its reference run alone first.
    long_n = 4000
    ref_long = ids(greedy(py, "task@1", n=long_n))
    stream = py.stream(PROMPT, adapter="task", max_tokens=long_n, ignore_eos=True)
    first = next(stream)
    assert first.adapter == "task@1"  # A stream names the version that serves it.
    got = ids(first)
    v2 = py.upload_adapter("task", fixture_adapter("lora_dora"))
    assert v2.version == 2
    r2 = greedy(py, "task")
    assert r2.adapter == "task@2"
    assert ids(r2) == ids(greedy(py, "task@2"))
    assert ids(r2) != ids(r1)
    py.delete_adapter("task@1")  # Deleted under the running stream.
    still_running = py.stats().running >= 1
    assert grpc_code(greedy, py, "task@1")[0] == "NOT_FOUND"
    for chunk in stream:
        got += ids(chunk)
        assert chunk.adapter == "task@1"
    assert still_running, "the stream ended before v2 was published; make it longer"
    assert got == ref_long, "the stream must finish on v1"

    py.delete_adapter("task", all_versions=True)
    assert grpc_code(greedy, py, "task")[0] == "NOT_FOUND"
    # Every version left the cache; the memory is back.
    assert wait_for(lambda: py.stats().adapter_cache.device_bytes == 0)

    keep = py.upload_adapter("keep", fixture_adapter("prefix"))
    before = ids(greedy(py, "keep"))
    py.close()
    assert s.stop() == 0, s.log
    s = start_server(tmp_path=data)
    py = client(s)
    assert [(a.name, a.version) for a in py.list_adapters()] == [("keep", keep.version)]
    assert ids(greedy(py, "keep")) == before
    py.close()
    assert s.stop() == 0, s.log


def test_load_pins_and_reports_residency(tmp_path, client):
    s = start_server(tmp_path=tmp_path / "data")
    py = client(s)
    py.upload_adapter("a", fixture_adapter("lora"))
    assert py.get_adapter("a").residency == py.adapters_pb.RESIDENCY_DISK
    loaded = py.load_adapter("a", pin=True)
    assert loaded.adapter.name == "a"
    assert wait_for(lambda: py.get_adapter("a").residency == py.adapters_pb.RESIDENCY_DEVICE)
    assert py.get_adapter("a").pinned
    assert py.stats().adapter_cache.pinned_adapters == 1
    py.unload_adapter("a")
    info = py.get_adapter("a")
    assert not info.pinned and info.residency == py.adapters_pb.RESIDENCY_DEVICE
    assert grpc_code(py.load_adapter, "missing")[0] == "NOT_FOUND"
    greedy(py, "a")
    cache = Ctl(s.target).json("stats")["adapter_cache"]
    assert cache["device_hits"] >= 1 and cache["loads"] == 1 and cache["device_adapters"] == 1, cache
    assert cache["device_bytes"] > 0 and cache["load_ms_max"] > 0, cache
    assert Ctl(s.target).json("adapters", "get", "a")["residency"] == "device"
    py.close()
    assert s.stop() == 0, s.log


# ---- 1,000 adapters, a device tier of 16 ----

N_ADAPTERS = 1000
HOLD = 16
RANK = 2
HIDDEN = 64  # The fixture Llama.
LAYERS = 2
ADAPTER_BYTES = LAYERS * (RANK * HIDDEN + HIDDEN * RANK) * 4  # fp32 A and B.


def random_lora(path, seed):
    """A random LoRA on q_proj (our own tiny safetensors writer)."""
    rng = random.Random(seed)
    header, body = {}, bytearray()
    for layer in range(LAYERS):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        for name, shape in ((f"{prefix}.lora_A.weight", [RANK, HIDDEN]),
                            (f"{prefix}.lora_B.weight", [HIDDEN, RANK])):
            n = shape[0] * shape[1]
            begin = len(body)
            body += struct.pack(f"<{n}f", *[rng.uniform(-1, 1) for _ in range(n)])
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, len(body)]}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(body))
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK,
                   "target_modules": ["q_proj"]}, f)
    return str(path)


def test_a_thousand_adapters_with_zipf_popularity_through_a_cache_of_sixteen(tmp_path, client):
    roots = tmp_path / "adapters"
    dirs = [random_lora(roots / f"a{i}", 1000 + i) for i in range(N_ADAPTERS)]
    budget = HOLD * ADAPTER_BYTES
    s = start_server(tmp_path=tmp_path / "data",
                     extra_args=["--allowed-adapter-root", str(roots),
                                 "--adapter-cache-bytes", str(budget),
                                 "--adapter-host-cache-bytes", "0",
                                 "--max-batch-size", "8", "--max-queue", "4096"])
    py = client(s)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: py.register_adapter(f"a{i}", dirs[i]), range(N_ADAPTERS)))
    assert sum(1 for _ in py.list_adapters(page_size=1000)) == N_ADAPTERS

    rng = random.Random(7)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(N_ADAPTERS)]
    draws = rng.choices(range(N_ADAPTERS), weights, k=400)

    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            c = py.stats().adapter_cache
            peak[0] = max(peak[0], c.device_bytes)
            assert c.device_bytes <= budget, c

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def run(i):
        return i, greedy(py, f"a{i}", n=4, logprobs=True)

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(run, draws))
    stop.set()
    watcher.join(30)
    stats = py.stats().adapter_cache
    py.close()
    assert s.stop() == 0, s.log
    assert 0 < peak[0] <= budget
    assert stats.device_adapters <= HOLD
    assert stats.evictions > 0 and stats.misses > HOLD and stats.device_hits > 0, stats
    assert stats.load_failures == 0

    # Each distinct adapter alone, as a start-up adapter: no store, no cache.
    distinct = sorted(set(draws))
    args = []
    for i in distinct:
        args += ["--adapter", f"a{i}={dirs[i]}"]
    ref_server = start_server(extra_args=args)
    ref = client(ref_server)
    alone = {i: greedy(ref, f"a{i}", n=4, logprobs=True) for i in distinct}
    base = greedy(ref, "", n=4, logprobs=True)
    ref.close()
    assert ref_server.stop() == 0, ref_server.log

    for i, got in results:
        want = alone[i]
        assert got.adapter == f"a{i}@1"
        assert ids(got) == ids(want), f"a{i}"
        for g, w in zip(got.tokens, want.tokens):
            assert abs(g.logprob - w.logprob) < 1e-4, f"a{i}"
    # Negative control: the adapters really differ from each other and from the base.
    signatures = {tuple(round(t.logprob, 3) for t in alone[i].tokens) for i in distinct}
    assert len(signatures) > len(distinct) // 2
    assert all(ids(alone[i]) != ids(base) or
               [t.logprob for t in alone[i].tokens] != [t.logprob for t in base.tokens]
               for i in distinct)
