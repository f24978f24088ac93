"""Fine-tuning end to end: the real adapterd trains adapters through adapterctl and
the Python client, and serves them through Generate.

- Learning for real (needs the real engine): a deterministic task, prompt a random
  three-digit number ("473") → completion " even" / " odd"; a LoRA job and a
  prefix-tuning job each reach held-out exact match far above the base model's.
- Serving continues during training: generation p50/p99 without and with a running
  job, printed (no timing assertion; every request must succeed).
- Cancel mid-epoch; kill -9 mid-job, restart, the job resumes from its checkpoint
  (never stays RUNNING); malformed datasets per the policy of engine/api/training.h.

The cancel, kill -9 and dataset-policy tests also run against the fake engine
(e2e_fake_engine), whose trainer steps, checkpoints and resumes like the real one.

Hyperparameters of the learning tests can be overridden from the environment
(ADAPTERD_E2E_LORA_LR, ADAPTERD_E2E_LORA_EPOCHS, ADAPTERD_E2E_PREFIX_LR,
ADAPTERD_E2E_PREFIX_EPOCHS) while tuning them on a new model.
"""

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

import pytest

from conftest import CLIENT_PY_DIR, FAKE, PROTO_DIR, Ctl, grpc_code, needs_real_engine, start_server, wait_for

# The fake trainer's step time: slow enough to act mid-job, fast enough for CI.
FAKE_ENV = dict(os.environ, FAKE_TRAIN_STEP_MS="40")
SERVER_ARGS = ["--training-progress-interval", "0.1"]


def parity_rows(n, seed, exclude=()):
    """n distinct rows {"prompt": "473", "completion": " odd"} not in `exclude`."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        number = rng.randrange(100, 1000)
        if str(number) in seen:
            continue
        seen.add(str(number))
        rows.append({"prompt": str(number), "completion": " even" if number % 2 == 0 else " odd"})
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tserver(tmp_path_factory):
    s = start_server(extra_args=SERVER_ARGS, tmp_path=tmp_path_factory.mktemp("train-data"),
                     env=FAKE_ENV)
    yield s
    assert s.alive(), f"adapterd died during the tests:\n{s.log}"
    assert s.stop() == 0, s.log


@pytest.fixture(scope="module")
def tctl(tserver):
    return Ctl(tserver.target)


@pytest.fixture(scope="module")
def tpy(tserver, client_module):
    c = client_module.AdapterdClient(tserver.target, proto_dir=PROTO_DIR, timeout=120)
    yield c
    c.close()


def exact_match(py, rows, adapter=""):
    """Fraction of rows whose greedy completion's first word is exactly the expected one.

    Words, not raw text: a Metaspace tokenizer (the llama fixture's) decodes the
    completion's tokens of " even" as "  even" after a prompt, so the spacing differs
    while the tokens are the trained ones.
    """
    hits = 0
    for row in rows:
        words = py.generate(row["prompt"], adapter=adapter, max_tokens=4).text.split()
        hits += bool(words) and words[0] == row["completion"].strip()
    return hits / len(rows)


def state(py, job):
    return py.job_state_name(job.state)


# ----------------------------------------------------------- learning for real


@needs_real_engine
def test_a_lora_job_through_adapterctl_learns_the_task_and_serves_it(tserver, tctl, tpy, tmp_path):
    train = parity_rows(300, seed=1)
    held_out = parity_rows(100, seed=2, exclude={r["prompt"] for r in train})
    data = write_jsonl(tmp_path / "parity.jsonl", train)
    base = exact_match(tpy, held_out)
    start = time.time()
    # The engine's quick-test hyperparameters (docs/training.md).
    r = tctl.run("train", "create", "--method", "lora", "--rank", "8", "--alpha", "16",
                 "--targets", "all-linear", "--data", data, "--name", "parity-lora",
                 "--epochs", os.environ.get("ADAPTERD_E2E_LORA_EPOCHS", "6"),
                 "--batch-size", "16", "--lr", os.environ.get("ADAPTERD_E2E_LORA_LR", "1e-2"),
                 "--scheduler", "linear", "--warmup-steps", "5", "--max-seq-length", "32",
                 "--checkpoint-every", "0", "--watch", timeout=600)
    updates = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert r.returncode == 0, f"{r.stderr}\n{updates[-1] if updates else ''}"
    final = updates[-1]
    assert final["state"] == "TRAINING_JOB_STATE_SUCCEEDED", final
    adapter = final["result_adapter"]
    tuned = exact_match(tpy, held_out, adapter=adapter)
    print(f"\nLoRA parity: held-out exact match base {base:.2f} → {tuned:.2f} ({adapter}, "
          f"{final['progress']['step']} steps, final loss {final['progress'].get('loss')}, "
          f"{time.time() - start:.1f} s)")
    assert tuned >= 0.9 and tuned >= base + 0.5, (base, tuned)
    # Registered in the tenant's namespace as an ecosystem-format LoRA.
    info = tctl.json("adapters", "get", adapter)
    assert info["method"] == "lora"


@needs_real_engine
def test_a_prefix_tuning_job_through_the_python_client_learns_the_task(tmp_path, client_module):
    # On the GPT-2 fixture, where " even"/" odd" is decided at the digit's position. On the
    # tiny Llama fixture the SentencePiece tokenizer puts the first differing token of
    # " even"/" odd" one position later, which the frozen random attention never carries the
    # digit to: prompt-learning methods stay at chance there in HF PEFT as in adapterd (LoRA,
    # which changes attention, learns); docs/training.md has the numbers, and
    # tests/training/learning_test.cc trains prefix and prompt tuning on Llama with "even"/"odd".
    s = start_server(extra_args=SERVER_ARGS, model="gpt2", tmp_path=tmp_path / "data")
    py = client_module.AdapterdClient(s.target, proto_dir=PROTO_DIR, timeout=120)
    try:
        train = parity_rows(300, seed=3)
        held_out = parity_rows(100, seed=4, exclude={r["prompt"] for r in train})
        ds = py.upload_dataset(write_jsonl(tmp_path / "parity-prefix.jsonl", train))
        base = exact_match(py, held_out)
        start = time.time()
        job = py.create_training_job(
            "parity-prefix", ds.dataset_id, method="prefix_tuning",
            config={"num_virtual_tokens": 16},
            hyperparameters={"epochs": int(os.environ.get("ADAPTERD_E2E_PREFIX_EPOCHS", "30")),
                             "batch_size": 16, "warmup_steps": 5, "max_seq_length": 64,
                             "checkpoint_every": 0,
                             "learning_rate": float(os.environ.get("ADAPTERD_E2E_PREFIX_LR", "1e-2"))})
        final = py.wait_training_job(job.job_id, timeout=600)
        assert state(py, final) == "SUCCEEDED", final
        tuned = exact_match(py, held_out, adapter=final.result_adapter)
        print(f"\nprefix tuning parity (gpt2 fixture): held-out exact match base {base:.2f} → "
              f"{tuned:.2f} ({final.result_adapter}, {final.progress.step} steps, "
              f"{time.time() - start:.1f} s)")
        assert tuned >= 0.9 and tuned >= base + 0.5, (base, tuned)
        info = py.get_adapter(final.result_adapter)
        assert info.method == "prefix_tuning"
        # The encoder checkpoint comes along, so that training can continue from it.
        assert "prompt_encoder.safetensors" in {f.name for f in info.files}
    finally:
        py.close()
        assert s.stop() == 0, s.log


@needs_real_engine
def test_bottleneck_adapters_then_their_fusion_are_trained_registered_and_served(tserver, tpy,
                                                                                tmp_path):
    ds = tpy.upload_dataset(write_jsonl(tmp_path / "fusion.jsonl", parity_rows(200, seed=13)))
    hp = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-2, "max_seq_length": 32,
          "checkpoint_every": 0}
    for name in ("pf-a", "pf-b"):
        job = tpy.create_training_job(name, ds.dataset_id, method="bottleneck",
                                      config={"config": "pfeiffer", "reduction_factor": 4},
                                      hyperparameters=hp)
        final = tpy.wait_training_job(job.job_id, timeout=300)
        assert state(tpy, final) == "SUCCEEDED", final
        assert tpy.get_adapter(final.result_adapter).method == "bottleneck"
    job = tpy.create_training_job("pf-fused", ds.dataset_id, method="fusion",
                                  config={"adapters": ["pf-a", "pf-b"]}, hyperparameters=hp)
    assert list(job.request.fusion.adapters) == ["pf-a@1", "pf-b@1"]  # Pinned at create.
    final = tpy.wait_training_job(job.job_id, timeout=300)
    assert state(tpy, final) == "SUCCEEDED", final
    files = sorted(f.name for f in tpy.get_adapter(final.result_adapter).files)
    assert files == ["adapter_fusion_config.json", "model_adapter_fusion.safetensors",
                     "pf-a/adapter.safetensors", "pf-a/adapter_config.json",
                     "pf-b/adapter.safetensors", "pf-b/adapter_config.json"], files
    assert tpy.generate("473", adapter=final.result_adapter, max_tokens=3).usage.completion_tokens > 0


@needs_real_engine
def test_serving_continues_while_a_job_trains(tserver, tpy, tmp_path):
    def latencies(n):
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            response = tpy.generate(str(100 + i), max_tokens=8)
            out.append((time.perf_counter() - t0) * 1000)
            assert response.usage.completion_tokens > 0
        return out

    def p(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    latencies(3)  # Warm-up.
    idle = latencies(100)
    ds = tpy.upload_dataset(write_jsonl(tmp_path / "busy.jsonl", parity_rows(200, seed=5)))
    job = tpy.create_training_job("busy", ds.dataset_id, config={"rank": 8},
                                  hyperparameters={"max_steps": 1000000, "batch_size": 16,
                                                   "learning_rate": 1e-3})
    assert wait_for(lambda: state(tpy, tpy.get_training_job(job.job_id)) == "RUNNING", 60)
    busy = latencies(100)
    during = tpy.get_training_job(job.job_id)
    tpy.cancel_training_job(job.job_id)
    assert state(tpy, tpy.wait_training_job(job.job_id, timeout=120)) == "CANCELLED"
    print(f"\ngeneration latency (8 tokens, n=100): without a job p50 {statistics.median(idle):.1f} ms "
          f"p99 {p(idle, 0.99):.1f} ms; with a LoRA job training p50 {statistics.median(busy):.1f} ms "
          f"p99 {p(busy, 0.99):.1f} ms (ratio p50 {statistics.median(busy) / statistics.median(idle):.2f}); "
          f"the job was at step {during.progress.step}, {during.progress.tokens_per_second:.0f} tok/s")


# ------------------------------------------------------------------ faults


def test_cancel_mid_epoch_stops_the_job_and_registers_nothing(tserver, tctl, tpy, tmp_path):
    data = write_jsonl(tmp_path / "cancel.jsonl", parity_rows(400, seed=6))
    created = tctl.json("train", "create", "--data", data, "--name", "never-made", "--epochs", "3",
                        "--batch-size", "4", "--lr", "1e-3")
    job_id = created["job_id"]
    # 100 steps per epoch: cancel inside the first.
    assert wait_for(lambda: 2 <= tpy.get_training_job(job_id).progress.step, 120)
    cancelled = tctl.json("train", "cancel", job_id)
    assert cancelled["state"] in ("TRAINING_JOB_STATE_RUNNING", "TRAINING_JOB_STATE_CANCELLED")
    r = tctl.run("train", "watch", job_id, timeout=120)
    assert r.returncode == 1, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["state"] == "TRAINING_JOB_STATE_CANCELLED"
    step = int(final["progress"].get("step", 0))
    assert step < 100, final  # Mid-epoch: the first epoch never completed.
    assert grpc_code(tpy.get_adapter, "never-made")[0] == "NOT_FOUND"


def start_endless_job(tmp_path, client_module, data_dir, name, seed, min_step):
    """A server on data_dir with a LoRA job that would run forever (checkpoints
    every 2 steps), once it has passed min_step. Returns (server, job_id)."""
    s = start_server(extra_args=SERVER_ARGS, tmp_path=data_dir, env=FAKE_ENV)
    py = client_module.AdapterdClient(s.target, proto_dir=PROTO_DIR, timeout=60)
    try:
        ds = py.upload_dataset(write_jsonl(tmp_path / f"{name}.jsonl", parity_rows(64, seed=seed)))
        job = py.create_training_job(name, ds.dataset_id, config={"rank": 8},
                                     hyperparameters={"max_steps": 1000000, "batch_size": 4,
                                                      "learning_rate": 1e-3, "checkpoint_every": 2})
        assert wait_for(lambda: py.get_training_job(job.job_id).progress.step >= min_step, 120)
    finally:
        py.close()
    return s, job.job_id


def test_kill9_mid_job_then_restart_resumes_from_the_checkpoint(tmp_path, client_module):
    data_dir = tmp_path / "data"
    s, job_id = start_endless_job(tmp_path, client_module, data_dir, "resumed", seed=8, min_step=6)
    s.proc.send_signal(signal.SIGKILL)
    s.wait_exit()

    s = start_server(extra_args=SERVER_ARGS, tmp_path=data_dir, env=FAKE_ENV)
    py = client_module.AdapterdClient(s.target, proto_dir=PROTO_DIR, timeout=60)
    try:
        # Never left RUNNING from the dead process: a runner took it again (attempt 2).
        def resumed_or_final():
            j = py.get_training_job(job_id)
            return j.attempts == 2 and (j.progress.resumed_from_step > 0 or
                                        state(py, j) in ("SUCCEEDED", "FAILED"))
        assert wait_for(resumed_or_final, 120), py.get_training_job(job_id)
        j = py.get_training_job(job_id)
        if state(py, j) == "FAILED":
            assert j.error, j  # FAILED must say why.
        else:
            assert j.progress.resumed_from_step >= 2, j
            assert j.progress.resumed_from_step % 2 == 0, j  # A checkpoint boundary.
            print(f"\nkill -9 at step >= 6; resumed from step {j.progress.resumed_from_step}")
            py.cancel_training_job(job_id)
            assert state(py, py.wait_training_job(job_id, timeout=120)) == "CANCELLED"
    finally:
        py.close()
        assert s.stop() == 0, s.log


def test_sigterm_stops_a_running_job_and_the_next_start_resumes_it(tmp_path, client_module):
    data_dir = tmp_path / "data"
    s, job_id = start_endless_job(tmp_path, client_module, data_dir, "term", seed=9, min_step=4)
    assert s.stop() == 0, s.log
    assert "queued for the next start" in s.log, s.log
    s = start_server(extra_args=SERVER_ARGS, tmp_path=data_dir, env=FAKE_ENV)
    py = client_module.AdapterdClient(s.target, proto_dir=PROTO_DIR, timeout=60)
    try:
        assert wait_for(lambda: py.get_training_job(job_id).progress.resumed_from_step >= 2, 120)
        py.cancel_training_job(job_id)
        assert state(py, py.wait_training_job(job_id, timeout=120)) == "CANCELLED"
    finally:
        py.close()
        assert s.stop() == 0, s.log


# ------------------------------------------------------------ dataset policy


def test_malformed_datasets_are_refused_or_skipped_and_counted_per_the_policy(tserver, tctl, tpy,
                                                                              tmp_path):
    good = [json.dumps(r) for r in parity_rows(20, seed=10)]
    lines = (good[:5] + ["{this is not json"] + good[5:10] +
             ['{"prompt": "123", "completion": ""}'] + good[10:])
    path = tmp_path / "bad.jsonl"
    with open(path, "wb") as f:
        for line in lines:
            f.write(line.encode() + b"\n")
        f.write(b'{"prompt": "\xff\xfe4", "completion": " even"}\n')  # Invalid UTF-8: line 23.
    code, message = tctl.error("train", "create", "--data", str(path), "--name", "bad", "--steps", "1")
    assert code == "INVALID_ARGUMENT", message
    assert "line 6" in message, message
    # With --skip-invalid-rows both malformed lines are skipped and counted, as is the
    # empty completion; the job is created.
    job = tctl.jsonl("train", "create", "--data", str(path), "--name", "skipping", "--steps", "1",
                     "--skip-invalid-rows")[-1]
    report = job["dataset_report"]
    assert int(report["skipped_malformed"]) == 2, report
    assert int(report["skipped_empty"]) == 1, report
    assert int(report["rows_used"]) == 20, report
    assert any("line 6" in e for e in report.get("first_errors", [])), report
    assert tctl.jsonl("train", "watch", job["job_id"])[-1]["state"] == "TRAINING_JOB_STATE_SUCCEEDED"
    # Nothing usable.
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "1", "completion": ""}])
    code, message = tctl.error("train", "create", "--data", empty, "--name", "none", "--steps", "1")
    assert code == "INVALID_ARGUMENT", message


@needs_real_engine
def test_over_long_rows_are_truncated_and_counted(tserver, tpy, tmp_path):
    rows = parity_rows(10, seed=11)
    rows.append({"prompt": "9" * 400, "completion": " odd"})
    ds = tpy.upload_dataset(write_jsonl(tmp_path / "long.jsonl", rows))
    job = tpy.create_training_job("long-rows", ds.dataset_id, config={"rank": 4},
                                  hyperparameters={"max_steps": 1, "max_seq_length": 32})
    report = job.dataset_report
    assert report.truncated + report.skipped_too_long >= 1, report
    assert report.rows_used >= 10, report
    assert state(tpy, tpy.wait_training_job(job.job_id, timeout=300)) == "SUCCEEDED"


def test_datasets_and_jobs_are_listed_and_a_dataset_in_use_is_kept(tserver, tctl, tpy, tmp_path):
    data = write_jsonl(tmp_path / "list.jsonl", parity_rows(40, seed=12))
    ds = tctl.json("datasets", "upload", data, "--name", "listed")
    assert ds["name"] == "listed" and int(ds["lines"]) == 40
    assert ds["dataset_id"] in {d["dataset_id"] for d in tctl.jsonl("datasets", "list")}
    job = tctl.json("train", "create", "--dataset", ds["dataset_id"], "--name", "holder",
                    "--steps", "1000000", "--batch-size", "4", "--lr", "1e-3")
    code, _ = tctl.error("datasets", "delete", ds["dataset_id"])
    assert code == "FAILED_PRECONDITION"
    listed = tctl.jsonl("train", "list", "--state", "running") + \
        tctl.jsonl("train", "list", "--state", "queued")
    assert job["job_id"] in {j["job_id"] for j in listed}
    tctl.json("train", "cancel", job["job_id"])
    watched = tctl.run("train", "watch", job["job_id"])
    assert watched.returncode == 1  # Not SUCCEEDED.
    assert json.loads(watched.stdout.splitlines()[-1])["state"] == "TRAINING_JOB_STATE_CANCELLED"
    tctl.json("datasets", "delete", ds["dataset_id"])
    assert grpc_code(tpy.delete_dataset, ds["dataset_id"])[0] == "NOT_FOUND"


def test_the_python_command_line_uploads_trains_watches_and_lists(tserver, tpy, tmp_path):
    """client/python/adapterd_client.py's shell commands: upload-dataset, train --watch,
    jobs, job; a failed create prints the gRPC code and exits non-zero."""
    cli = [sys.executable, os.path.join(CLIENT_PY_DIR, "adapterd_client.py"), "--target", tserver.target,
           "--proto-dir", PROTO_DIR]

    def run(*args):
        return subprocess.run(cli + [str(a) for a in args], capture_output=True, text=True, timeout=180)

    up = run("upload-dataset", write_jsonl(tmp_path / "cli.jsonl", parity_rows(32, seed=11)))
    assert up.returncode == 0, up.stderr
    dataset_id = up.stdout.strip()
    assert dataset_id.startswith("ds_"), up.stdout
    train = run("train", "cli-lora", dataset_id, "--method", "lora", "--config", '{"rank": 4}',
                "--hyperparameters", '{"max_steps": 4, "batch_size": 8, "learning_rate": 0.01}',
                "--watch")
    assert train.returncode == 0, train.stdout + train.stderr
    lines = train.stdout.splitlines()
    job_id = lines[0].strip()
    assert lines[-1].startswith(f"{job_id}\tSUCCEEDED\tlora\tcli-lora\t4/4"), train.stdout
    assert lines[-1].endswith("cli-lora@1"), lines[-1]
    listed = run("--json", "jobs", "--state", "succeeded")
    assert listed.returncode == 0, listed.stderr
    assert job_id in [json.loads(line)["job_id"] for line in listed.stdout.splitlines()]
    got = run("job", job_id)
    assert got.returncode == 0 and got.stdout.startswith(f"{job_id}\tSUCCEEDED"), got.stdout + got.stderr
    assert tpy.get_adapter("cli-lora").method == "lora"
    bad = run("train", "cli-bad", "ds_missing", "--config", '{"rank": 4}')
    assert bad.returncode != 0 and "NOT_FOUND" in bad.stderr, bad.stdout + bad.stderr
