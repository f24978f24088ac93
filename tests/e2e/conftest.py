"""End-to-end harness: the real adapterd binary on a loopback port, driven by
adapterctl (subprocess, --json) and by the Python client generated from our protos.

Environment (set by CTest, see CMakeLists.txt):
  ADAPTERD_BIN, ADAPTERCTL_BIN   the binaries under test
  ADAPTERD_PROTO_DIR             proto/ (for the Python stubs)
  ADAPTERD_CLIENT_PY_DIR         client/python/
  ADAPTERD_FIXTURES_DIR          fixtures made by the CTest fixture `models`
  ADAPTERD_E2E_SERVER_BIN        optional: a different server binary with adapterd's
                                 flags (tests/server/fake_adapterd), to test the
                                 clients without a model; model tests are skipped.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
ADAPTERD_BIN = os.environ.get("ADAPTERD_E2E_SERVER_BIN") or os.environ.get("ADAPTERD_BIN", "")
ADAPTERCTL_BIN = os.environ.get("ADAPTERCTL_BIN", "")
PROTO_DIR = os.environ.get("ADAPTERD_PROTO_DIR", os.path.join(ROOT, "proto"))
CLIENT_PY_DIR = os.environ.get("ADAPTERD_CLIENT_PY_DIR", os.path.join(ROOT, "client", "python"))
FIXTURES_DIR = os.environ.get("ADAPTERD_FIXTURES_DIR", "")
FAKE = bool(os.environ.get("ADAPTERD_E2E_SERVER_BIN"))
START_TIMEOUT_S = 180

_LISTENING = re.compile(r"listening on (\S+)")

needs_real_engine = pytest.mark.skipif(FAKE, reason="needs the real engine")


def model_dir(name="llama"):
    path = os.path.join(FIXTURES_DIR, "models", name)
    if not FIXTURES_DIR or not os.path.isdir(path):
        pytest.skip(f"fixture model {path} missing (run the CTest fixture `models`)")
    return path


class ServerProcess:
    """adapterd as a child process; stderr is collected in `log`."""

    def __init__(self, args, env=None, wait=True, auth=False):
        if not ADAPTERD_BIN or not os.path.exists(ADAPTERD_BIN):
            pytest.skip("ADAPTERD_BIN not built")
        # Tests run without authentication unless they test it (auth=True).
        self.args = [ADAPTERD_BIN] + list(args) + ([] if auth else ["--insecure-no-auth"])
        self.lines = []
        self.target = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace", env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m and self.target is None:
                self.target = m.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def log(self):
        return "".join(self.lines)

    def wait_ready(self):
        if not self._ready.wait(START_TIMEOUT_S) or self.target is None:
            self.stop()
            raise AssertionError(f"adapterd did not start: rc={self.proc.returncode}\n{self.log}")

    def wait_exit(self, timeout=START_TIMEOUT_S):
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode


def start_server(extra_args=(), model="llama", tmp_path=None, env=None, auth=False):
    args = ["--listen", "127.0.0.1:0", "--log-level", "info"]
    if model is not None and not FAKE:
        args += ["--model", model_dir(model)]
    if tmp_path is not None:
        args += ["--data-dir", str(tmp_path)]
    return ServerProcess(args + list(extra_args), env=env, auth=auth)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path=tmp_path_factory.mktemp("data"))
    yield s
    assert s.alive(), f"adapterd died during the tests:\n{s.log}"
    rc = s.stop()
    assert rc == 0, f"adapterd exited with {rc} on SIGTERM:\n{s.log}"


class Ctl:
    """Runs adapterctl against a target."""

    def __init__(self, target):
        if not ADAPTERCTL_BIN or not os.path.exists(ADAPTERCTL_BIN):
            pytest.skip("ADAPTERCTL_BIN not built")
        self.target = target

    def run(self, *args, input=None, timeout=120):
        cmd = [ADAPTERCTL_BIN, "--target", self.target, "--json"] + [str(a) for a in args]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, errors="replace",
                              timeout=timeout)

    def json(self, *args, **kwargs):
        r = self.run(*args, **kwargs)
        assert r.returncode == 0, f"adapterctl {args} failed ({r.returncode}): {r.stderr}"
        return json.loads(r.stdout)

    def jsonl(self, *args, **kwargs):
        r = self.run(*args, **kwargs)
        assert r.returncode == 0, f"adapterctl {args} failed ({r.returncode}): {r.stderr}"
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def error(self, *args, **kwargs):
        """Runs a command that must fail; returns the gRPC code name it printed."""
        r = self.run(*args, **kwargs)
        assert r.returncode != 0, f"adapterctl {args} unexpectedly succeeded: {r.stdout}"
        m = re.match(r"adapterctl: ([A-Z_]+): ", r.stderr)
        assert m, r.stderr
        return m.group(1), r.stderr


@pytest.fixture(scope="module")
def ctl(server):
    return Ctl(server.target)


def _load_client_module():
    if CLIENT_PY_DIR not in sys.path:
        sys.path.insert(0, CLIENT_PY_DIR)
    import adapterd_client  # noqa: E402
    return adapterd_client


@pytest.fixture(scope="session")
def client_module(tmp_path_factory):
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    mod = _load_client_module()
    mod.ensure_stubs(PROTO_DIR, str(tmp_path_factory.mktemp("pystubs")))
    return mod


@pytest.fixture(scope="module")
def py(server, client_module):
    c = client_module.AdapterdClient(server.target, proto_dir=PROTO_DIR)
    yield c
    c.close()


def grpc_code(call, *args, **kwargs):
    """Returns the status code name of a call that must fail."""
    import grpc
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    return info.value.code().name, info.value.details()


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def copy_model(name, dest):
    src = model_dir(name)
    shutil.copytree(src, dest)
    return str(dest)
