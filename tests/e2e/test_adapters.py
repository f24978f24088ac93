"""The Adapters service end to end: upload → list/get → delete → NOT_FOUND,
restarts keep the registry and blobs, bad inputs get exact codes, and kill -9
at random moments (and at each named crash point) during uploads and deletes
never leaves a partial adapter visible nor loses an acknowledged one.
"""

import hashlib
import json
import os
import random
import signal
import struct
import threading
import time

import pytest

from conftest import Ctl, start_server

LORA_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def safetensors(tensors, seed):
    """Bytes of a safetensors file of F32 tensors {name: shape} with random non-zero values."""
    rng = random.Random(seed)
    header, data = {}, bytearray()
    for name, shape in tensors.items():
        n = 1
        for d in shape:
            n *= d
        begin = len(data)
        data += struct.pack(f"<{n}f", *[rng.choice((-1, 1)) * rng.uniform(0.1, 1.0) for _ in range(n)])
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, len(data)]}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)


def lora_files(seed, width=32):
    """A LoRA on q_proj of the fixture Llama (hidden 64, 2 layers) that the
    engine's validator accepts; its rank (and so its size) grows with `width`."""
    r = max(1, width // 16)
    tensors = {}
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{prefix}.lora_A.weight"] = [r, 64]
        tensors[f"{prefix}.lora_B.weight"] = [64, r]
    config = dict(LORA_CONFIG, r=r, lora_alpha=2 * r, target_modules=["q_proj"])
    return [("adapter_config.json", json.dumps(config).encode()),
            ("adapter_model.safetensors", safetensors(tensors, seed))]


def write_dir(path, files):
    os.makedirs(path, exist_ok=True)
    for name, data in files:
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return str(path)


def manifest_sha(files):
    lines = "".join(f"{name} {len(data)} {hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def start_store_server(data_dir, models_dir=None, extra=(), env=None):
    args = ["--max-adapter-bytes", str(8 << 20)] + list(extra)
    if models_dir is not None:
        args += ["--allowed-adapter-root", str(models_dir)]
    return start_server(tmp_path=data_dir, extra_args=args, env=env)


@pytest.fixture
def store(tmp_path, client_module):
    data, models = tmp_path / "data", tmp_path / "models"
    models.mkdir()
    s = start_store_server(data, models)
    c = client_module.AdapterdClient(s.target)
    yield s, c, data, models
    c.close()
    assert s.alive(), s.log
    assert s.stop() == 0, s.log


def on_disk_ok(data_dir, info):
    """True if the version's files exist under the store with the recorded checksums."""
    for f in info.files:
        path = os.path.join(data_dir, "adapters", info.adapter_id, str(info.version), f.name)
        try:
            with open(path, "rb") as fh:
                body = fh.read()
        except OSError:
            return False
        if len(body) != f.size or hashlib.sha256(body).hexdigest() != f.sha256:
            return False
    return True


def test_upload_list_get_delete_then_not_found(store, client_module):
    from conftest import grpc_code
    s, py, data, _ = store
    files = lora_files(1)
    info = py.upload_adapter("summarize", files, chunk_bytes=300)
    assert (info.name, info.version, info.method) == ("summarize", 1, "lora")
    assert info.sha256 == manifest_sha(files)
    assert on_disk_ok(data, info)

    ctl = Ctl(s.target)
    up_dir = write_dir(data.parent / "local2", lora_files(2))
    r = ctl.run("adapters", "upload", "summarize", up_dir, "--chunk-bytes", "256")
    assert r.returncode == 0, r.stderr
    assert "upload summarize:" in r.stderr and "(100%)" in r.stderr
    v2 = json.loads(r.stdout)
    assert v2["version"] == 2 and v2["state"] == "ready"

    listed = ctl.json("adapters", "list")["adapters"]
    assert [a["ref"] for a in listed] == ["summarize@1", "summarize@2"]
    assert ctl.json("adapters", "get", "summarize")["version"] == 2
    assert [a.version for a in py.list_adapters(method="lora")] == [1, 2]
    assert list(py.list_adapters(method="prefix_tuning")) == []

    deleted = ctl.json("adapters", "delete", "summarize", "--all-versions")["deleted"]
    assert len(deleted) == 2
    assert ctl.error("adapters", "get", "summarize")[0] == "NOT_FOUND"
    assert grpc_code(py.get_adapter, "summarize@1")[0] == "NOT_FOUND"
    assert os.listdir(data / "blobs") == []


def test_register_from_an_allowed_root_and_refuse_escapes(store):
    s, py, data, models = store
    good = write_dir(models / "good", lora_files(3))
    outside = write_dir(data.parent / "outside", lora_files(4))
    os.symlink(outside, models / "escape")
    ctl = Ctl(s.target)
    info = ctl.json("adapters", "register", "reg", good)
    assert info["version"] == 1 and info["method"] == "lora"
    assert ctl.error("adapters", "register", "bad", str(models / "escape"))[0] == "PERMISSION_DENIED"
    assert ctl.error("adapters", "register", "bad", str(models / ".." / "outside"))[0] == "PERMISSION_DENIED"
    assert ctl.error("adapters", "register", "bad", "/etc")[0] == "PERMISSION_DENIED"
    assert [a.name for a in py.list_adapters()] == ["reg"]


def test_restart_keeps_the_registry_and_blobs(tmp_path, client_module):
    data = tmp_path / "data"
    s = start_store_server(data)
    uploaded = {}
    with client_module.AdapterdClient(s.target) as py:
        for i in range(4):
            files = lora_files(10 + i, width=64)
            info = py.upload_adapter(f"a{i}", files)
            uploaded[info.name] = info.sha256
        py.delete_adapter("a3@1")
        del uploaded["a3"]
    assert s.stop() == 0, s.log
    blobs_before = sorted(os.listdir(data / "blobs"))
    s = start_store_server(data)
    try:
        assert "blobs_removed=0" in s.log, s.log
        with client_module.AdapterdClient(s.target) as py:
            listed = {a.name: a for a in py.list_adapters()}
            assert {n: a.sha256 for n, a in listed.items()} == uploaded
            assert all(on_disk_ok(data, a) for a in listed.values())
        assert sorted(os.listdir(data / "blobs")) == blobs_before
    finally:
        assert s.stop() == 0, s.log


def test_bad_inputs_get_exact_codes_and_change_nothing(store, client_module):
    from conftest import grpc_code
    s, py, data, models = store
    keep = py.upload_adapter("keep", lora_files(5), version=3)
    before = (sorted(os.listdir(data / "blobs")), [(a.name, a.version) for a in py.list_adapters()])
    files = lora_files(6)
    for name in ["a/b", "..", "../etc", "x\0y", "n" * 300, "", ".hidden"]:
        assert grpc_code(py.upload_adapter, name, files)[0] == "INVALID_ARGUMENT", repr(name)
        assert grpc_code(py.get_adapter, name)[0] == "INVALID_ARGUMENT", repr(name)
    # Duplicate version.
    assert grpc_code(py.upload_adapter, "keep", files, version=3)[0] == "ALREADY_EXISTS"
    # Over the --max-adapter-bytes limit (8 MiB).
    big = lora_files(7, width=300000)
    code, msg = grpc_code(py.upload_adapter, "big", big)
    assert code == "RESOURCE_EXHAUSTED" and str(8 << 20) in msg, msg
    # Truncated: the stream ends early.
    msgs = list(py.upload_messages("trunc", files, chunk_bytes=64))
    assert grpc_code(py.adapters.UploadAdapter, iter(msgs[:-2]))[0] == "FAILED_PRECONDITION"
    # Checksum mismatch: the header promises other bytes.
    other = lora_files(8)
    msgs = list(py.upload_messages("sum", other))[:1] + list(py.upload_messages("sum", files))[1:]
    code, msg = grpc_code(py.adapters.UploadAdapter, iter(msgs))
    assert code == "INVALID_ARGUMENT" and "checksum mismatch" in msg, msg
    # A pickle file.
    code, msg = grpc_code(py.upload_adapter, "pkl", [files[0], ("adapter_model.bin", b"\x80\x04.")])
    assert code == "INVALID_ARGUMENT" and "pickle" in msg, msg
    # A malformed safetensors file.
    body = files[1][1]
    broken = [files[0], ("adapter_model.safetensors", bytes([body[0] ^ 0x55]) + body[1:])]
    assert grpc_code(py.upload_adapter, "broken", broken)[0] == "INVALID_ARGUMENT"
    after = (sorted(os.listdir(data / "blobs")), [(a.name, a.version) for a in py.list_adapters()])
    assert after == before
    assert os.listdir(data / "uploads") == []
    assert py.get_adapter("keep").sha256 == keep.sha256


CRASH_POINTS = ["commit.after_pending", "commit.after_blobs", "commit.after_version_dir",
                "commit.after_ready", "delete.after_commit", "delete.after_unlink"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_each_named_point_leaves_a_consistent_store(tmp_path, client_module, point):
    import grpc
    data = tmp_path / "data"
    s = start_store_server(data)
    with client_module.AdapterdClient(s.target) as py:
        kept = py.upload_adapter("kept", lora_files(1))
    assert s.stop() == 0
    env = dict(os.environ, ADAPTERD_CRASH_POINT=point)
    s = start_store_server(data, env=env)
    with client_module.AdapterdClient(s.target, timeout=30) as py:
        with pytest.raises(grpc.RpcError):
            if point.startswith("commit"):
                py.upload_adapter("new", lora_files(2))
            else:
                py.delete_adapter("kept@1")
    assert s.wait_exit(30) == 137
    s = start_store_server(data)
    try:
        with client_module.AdapterdClient(s.target) as py:
            listed = {a.name: a for a in py.list_adapters()}
            for a in listed.values():
                assert on_disk_ok(data, a), (point, a)
            if point.startswith("commit"):
                # Unacknowledged: present only if the READY commit happened.
                assert ("new" in listed) == (point == "commit.after_ready"), (point, listed.keys())
                assert listed["kept"].sha256 == kept.sha256
            else:
                assert "kept" not in listed  # The delete committed before the crash.
            referenced = {f.sha256 for a in listed.values() for f in a.files}
            assert set(os.listdir(data / "blobs")) == referenced
            assert os.listdir(data / "uploads") == []
    finally:
        assert s.stop() == 0, s.log


def test_kill9_at_random_moments_during_uploads_and_deletes(tmp_path, client_module):
    """Dozens of SIGKILLs while uploads and deletes run; after each restart no
    partial adapter is visible, every acknowledged upload is there with valid
    checksums, and every acknowledged delete stays deleted."""
    import grpc
    rng = random.Random(1234)
    data = tmp_path / "data"
    acked = {}        # "name@version" -> manifest sha256 (acknowledged uploads)
    deleted = set()   # acknowledged deletes
    maybe_deleted = set()  # deletes cut short by the kill: either outcome is allowed
    iterations, kills, deadline = 30, 0, time.time() + 240
    payloads = [lora_files(100 + i, width=rng.choice([256, 2048, 8192])) for i in range(6)]
    for it in range(iterations):
        if time.time() > deadline:
            break
        s = start_store_server(data)
        py = client_module.AdapterdClient(s.target, timeout=20)
        # Check the state the previous crash left.
        listed = {f"{a.name}@{a.version}": a for a in py.list_adapters()}
        for ref in list(maybe_deleted):
            if ref not in listed:
                deleted.add(ref)
            maybe_deleted.discard(ref)
        for ref, sha in acked.items():
            if ref in deleted:
                assert ref not in listed, (it, ref)
            else:
                assert ref in listed and listed[ref].sha256 == sha, (it, ref, sorted(listed))
        for ref, a in listed.items():
            assert on_disk_ok(data, a), (it, ref)
        assert os.listdir(data / "uploads") == []
        live = [ref for ref in acked if ref not in deleted]
        lock = threading.Lock()
        stop = threading.Event()

        def uploader(k):
            while not stop.is_set():
                files = payloads[rng.randrange(len(payloads))]
                try:
                    info = py.upload_adapter(f"n{k}", files, chunk_bytes=16 << 10)
                except grpc.RpcError:
                    return
                with lock:
                    acked[f"{info.name}@{info.version}"] = info.sha256

        def deleter():
            for ref in rng.sample(live, min(3, len(live))):
                if stop.is_set():
                    return
                try:
                    py.delete_adapter(ref)
                except grpc.RpcError:
                    with lock:
                        maybe_deleted.add(ref)
                    return
                with lock:
                    deleted.add(ref)

        threads = [threading.Thread(target=uploader, args=(k,)) for k in range(3)]
        threads.append(threading.Thread(target=deleter))
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.0, 0.4))
        s.proc.send_signal(signal.SIGKILL)
        kills += 1
        s.wait_exit(30)
        stop.set()
        for t in threads:
            t.join(30)
        py.close()
    assert kills >= 10
    # The final check after the last kill.
    s = start_store_server(data)
    try:
        with client_module.AdapterdClient(s.target) as py:
            listed = {f"{a.name}@{a.version}": a for a in py.list_adapters()}
            for ref, sha in acked.items():
                if ref in maybe_deleted:
                    continue
                assert (ref in listed) == (ref not in deleted), ref
                if ref in listed:
                    assert listed[ref].sha256 == sha
            assert all(on_disk_ok(data, a) for a in listed.values())
            referenced = {f.sha256 for a in listed.values() for f in a.files}
            assert set(os.listdir(data / "blobs")) == referenced
        assert len(acked) > 10, len(acked)
        print(f"kill -9 x{kills}: {len(acked)} acknowledged uploads, {len(deleted)} deletes, "
              f"{len(listed)} adapters at the end")
    finally:
        assert s.stop() == 0, s.log
