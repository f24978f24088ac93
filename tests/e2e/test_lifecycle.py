"""Start-up, health, graceful shutdown, the default model, and start-up failures."""

import json
import os
import signal
import struct
import threading

from conftest import FAKE, ServerProcess, copy_model, model_dir, needs_real_engine, start_server


def health(target, service=""):
    """grpc.health.v1.Health/Check over raw bytes: 1 SERVING, 2 NOT_SERVING."""
    import grpc
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        body = service.encode()
        reply = check(bytes([0x0A, len(body)]) + body, timeout=10)
    return reply[1] if len(reply) >= 2 else 0


def test_health_is_serving_for_the_server_and_its_services(server, client_module):
    assert health(server.target) == 1
    assert health(server.target, "adapterd.v1.Inference") == 1
    assert health(server.target, "adapterd.v1.Admin") == 1


def test_sigterm_drains_running_streams_and_exits_zero(tmp_path, client_module):
    s = start_server(tmp_path=tmp_path, extra_args=["--drain-timeout", "30"])
    outcome = {}
    with client_module.AdapterdClient(s.target) as py:
        stream = py.stream("Once upon a time", max_tokens=24, ignore_eos=True)
        first = next(stream)

        def consume():
            try:
                outcome["chunks"] = [first] + list(stream)
            except Exception as e:  # noqa: BLE001
                outcome["error"] = e

        t = threading.Thread(target=consume)
        t.start()
        s.proc.send_signal(signal.SIGTERM)
        t.join(60)
    assert s.wait_exit(60) == 0, s.log
    assert "draining" in s.log and "stopped" in s.log, s.log
    if "error" in outcome:  # Only a request that did not fit the drain may fail, as UNAVAILABLE.
        assert outcome["error"].code().name == "UNAVAILABLE", outcome["error"]
    else:
        assert sum(len(c.tokens) for c in outcome["chunks"]) == 24


def test_an_address_in_use_stops_the_server_with_a_clear_message(server, tmp_path):
    s = ServerProcess(["--listen", server.target, "--data-dir", str(tmp_path)] +
                      ([] if FAKE else ["--model", model_dir("llama")]), wait=False)
    assert s.wait_exit(120) != 0
    assert "cannot listen on " + server.target in s.log, s.log


def test_bad_flags_exit_non_zero(tmp_path):
    s = ServerProcess(["--dtype", "int3"], wait=False)
    assert s.wait_exit(30) != 0


@needs_real_engine
def test_without_a_model_the_server_serves_the_default_model(tmp_path, client_module):
    s = start_server(model=None, tmp_path=tmp_path)
    try:
        assert "default" in s.log, s.log
        with client_module.AdapterdClient(s.target) as py:
            info = py.info()
            assert info.model.is_default_model
            r = py.generate("Hello", max_tokens=8, ignore_eos=True)
            assert r.usage.completion_tokens == 8
            chunks = list(py.stream("Hello", max_tokens=8, ignore_eos=True))
            assert [t.id for c in chunks for t in c.tokens] == [t.id for t in r.tokens]
    finally:
        assert s.stop() == 0, s.log
    # A second start reuses what the first materialised.
    s = start_server(model=None, tmp_path=tmp_path)
    try:
        with client_module.AdapterdClient(s.target) as py:
            assert py.info().model.is_default_model
    finally:
        assert s.stop() == 0, s.log


def _expect_start_failure(model_path, tmp_path, code):
    s = ServerProcess(["--listen", "127.0.0.1:0", "--model", str(model_path),
                       "--data-dir", str(tmp_path / "data")], wait=False)
    rc = s.wait_exit(120)
    assert rc != 0, s.log
    assert s.target is None, "it must not start serving"
    assert "cannot load the model" in s.log, s.log
    assert code in s.log, s.log
    return s.log


def _rewrite_header(path, edit):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def _weights_file(model):
    path = os.path.join(model, "model.safetensors")
    assert os.path.exists(path), os.listdir(model)
    return path


@needs_real_engine
def test_a_missing_model_dir_fails_to_start(tmp_path):
    log = _expect_start_failure(tmp_path / "no-such-model", tmp_path, "NOT_FOUND")
    assert "no-such-model" in log


@needs_real_engine
def test_a_corrupt_config_fails_to_start(tmp_path):
    model = copy_model("llama", tmp_path / "m")
    with open(os.path.join(model, "config.json"), "w") as f:
        f.write("{ this is not json")
    _expect_start_failure(model, tmp_path, "INVALID_ARGUMENT")


@needs_real_engine
def test_truncated_weights_fail_to_start(tmp_path):
    model = copy_model("llama", tmp_path / "m")
    path = _weights_file(model)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    _expect_start_failure(model, tmp_path, "INVALID_ARGUMENT")


@needs_real_engine
def test_a_safetensors_header_with_offsets_past_the_end_fails_to_start(tmp_path):
    model = copy_model("llama", tmp_path / "m")

    def lie(header):
        name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin, end + 4096]
        header[name]["shape"] = [1, (end + 4096 - begin) // 4]
        header[name]["dtype"] = "F32"

    _rewrite_header(_weights_file(model), lie)
    _expect_start_failure(model, tmp_path, "INVALID_ARGUMENT")


@needs_real_engine
def test_a_safetensors_header_whose_shape_disagrees_with_its_bytes_fails_to_start(tmp_path):
    model = copy_model("llama", tmp_path / "m")

    def lie(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [d * 2 for d in header[name]["shape"]]

    _rewrite_header(_weights_file(model), lie)
    _expect_start_failure(model, tmp_path, "INVALID_ARGUMENT")


@needs_real_engine
def test_an_unknown_architecture_fails_to_start(tmp_path):
    model = copy_model("llama", tmp_path / "m")
    path = os.path.join(model, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["model_type"] = "mamba"
    config["architectures"] = ["MambaForCausalLM"]
    with open(path, "w") as f:
        json.dump(config, f)
    log = _expect_start_failure(model, tmp_path, "UNIMPLEMENTED")
    assert "mamba" in log.lower()
