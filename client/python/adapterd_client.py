#!/usr/bin/env python3
"""A Python client for adapterd, using grpcio and stubs generated from our protos.

The stubs are generated on first use with ``python3 -m grpc_tools.protoc`` into a
cache directory (``$ADAPTERD_PY_STUBS`` or a folder under the temp dir), so the
only requirements are ``pip install grpcio grpcio-tools``.

As a library::

    from adapterd_client import AdapterdClient
    client = AdapterdClient("127.0.0.1:50051")
    print(client.generate("Once upon a time", max_tokens=20).text)
    for chunk in client.stream("Once upon a time", max_tokens=20):
        print(chunk.text, end="", flush=True)
    print(client.score("The cat", [" sat", " flew"]).scores[0].logprob)
    info = client.upload_adapter("summarize", "path/to/peft_adapter_dir")
    print(info.name, info.version, info.sha256)
    for a in client.list_adapters():
        print(a.name, a.version, a.method)
    ds = client.upload_dataset("train.jsonl")
    job = client.create_training_job("parity", ds.dataset_id, method="lora",
                                     config={"rank": 8, "target_modules": ["all-linear"]},
                                     hyperparameters={"epochs": 3, "learning_rate": 2e-2})
    for update in client.watch_training_job(job.job_id):
        print(client.job_state_name(update.state), update.progress.step, update.progress.loss)

From the shell::

    python3 client/python/adapterd_client.py --target 127.0.0.1:50051 generate "Hello" --max-tokens 20
    python3 client/python/adapterd_client.py stream "Hello" --max-tokens 20
    python3 client/python/adapterd_client.py score "The cat" " sat" " flew"
    python3 client/python/adapterd_client.py info
    python3 client/python/adapterd_client.py upload summarize path/to/adapter_dir
    python3 client/python/adapterd_client.py list
    python3 client/python/adapterd_client.py upload-dataset train.jsonl           # → ds_...
    python3 client/python/adapterd_client.py train parity ds_... --method lora \
        --config '{"rank": 8, "target_modules": ["all-linear"]}' \
        --hyperparameters '{"epochs": 3, "learning_rate": 0.02}' --watch
    python3 client/python/adapterd_client.py jobs [--state running]
    python3 client/python/adapterd_client.py job|watch|cancel job_...
"""

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(_HERE, "..", "..", "proto"))
_PROTOS = ("adapterd/v1/inference.proto", "adapterd/v1/admin.proto", "adapterd/v1/adapters.proto",
           "adapterd/v1/training.proto")
# The files an adapter upload may carry (the server refuses anything else).
# The files the server's store accepts (adapters_store/adapter_ref.h); AdapterFusion
# also uploads each fused adapter's subdirectory (FUSED_ADAPTER_FILES under its name).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter.safetensors",
                 "prompt_encoder.safetensors", "adapter_fusion_config.json",
                 "model_adapter_fusion.safetensors")
FUSED_ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors")


def ensure_stubs(proto_dir=None, out_dir=None):
    """Generates the Python stubs for our protos if needed and makes them importable.

    Returns the directory holding the generated ``adapterd/v1/*_pb2*.py``. The
    directory name carries a hash of the proto files, so edited protos get
    fresh stubs.
    """
    proto_dir = os.path.abspath(proto_dir or os.environ.get("ADAPTERD_PROTO_DIR") or DEFAULT_PROTO_DIR)
    digest = hashlib.sha256()
    for proto in _PROTOS:
        with open(os.path.join(proto_dir, proto), "rb") as f:
            digest.update(f.read())
    if out_dir is None:
        base = os.environ.get("ADAPTERD_PY_STUBS") or os.path.join(tempfile.gettempdir(), "adapterd_py_stubs")
        out_dir = os.path.join(base, digest.hexdigest()[:16])
    marker = os.path.join(out_dir, ".complete")
    if not os.path.exists(marker):
        os.makedirs(out_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
               f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        cmd += [os.path.join(proto_dir, p) for p in _PROTOS]
        subprocess.run(cmd, check=True)
        with open(marker, "w") as f:
            f.write("ok\n")
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return out_dir


def load_modules(proto_dir=None, out_dir=None):
    """Returns (inference_pb2, inference_pb2_grpc, admin_pb2, admin_pb2_grpc)."""
    ensure_stubs(proto_dir, out_dir)
    return tuple(importlib.import_module(f"adapterd.v1.{name}") for name in
                 ("inference_pb2", "inference_pb2_grpc", "admin_pb2", "admin_pb2_grpc"))


def load_adapter_modules(proto_dir=None, out_dir=None):
    """Returns (adapters_pb2, adapters_pb2_grpc)."""
    ensure_stubs(proto_dir, out_dir)
    return tuple(importlib.import_module(f"adapterd.v1.{name}") for name in
                 ("adapters_pb2", "adapters_pb2_grpc"))


def load_training_modules(proto_dir=None, out_dir=None):
    """Returns (training_pb2, training_pb2_grpc)."""
    ensure_stubs(proto_dir, out_dir)
    return tuple(importlib.import_module(f"adapterd.v1.{name}") for name in
                 ("training_pb2", "training_pb2_grpc"))


# CreateTrainingJobRequest's method field and config message, by method name.
TRAINING_METHODS = {
    "lora": ("lora", "LoraConfig"),
    "bottleneck": ("bottleneck", "BottleneckConfig"),
    "fusion": ("fusion", "FusionConfig"),
    "prefix_tuning": ("prefix_tuning", "PrefixTuningConfig"),
    "p_tuning": ("p_tuning", "PTuningConfig"),
    "prompt_tuning": ("prompt_tuning", "PromptTuningConfig"),
}


def adapter_files_in(directory):
    """[(file name, path)] of the adapter files in a local directory ("fa/adapter.safetensors"
    for the adapters an AdapterFusion fuses)."""
    files = [(name, os.path.join(directory, name)) for name in ADAPTER_FILES
             if os.path.isfile(os.path.join(directory, name))]
    if os.path.isfile(os.path.join(directory, "adapter_fusion_config.json")):
        for sub in sorted(os.listdir(directory)):
            for name in FUSED_ADAPTER_FILES:
                path = os.path.join(directory, sub, name)
                if os.path.isdir(os.path.join(directory, sub)) and os.path.isfile(path):
                    files.append((f"{sub}/{name}", path))
    return files


class AdapterdClient:
    """Blocking client for the Inference and Admin services.

    Errors raise ``grpc.RpcError``; ``e.code()`` is the status code and
    ``e.details()`` the server's message.
    """

    def __init__(self, target="127.0.0.1:50051", token=None, timeout=None, proto_dir=None,
                 tls_ca=None, tls_cert=None, tls_key=None):
        """tls_ca (a PEM CA file) turns TLS on; tls_cert and tls_key add a client
        certificate for mutual TLS."""
        import grpc  # Imported here so that --help works without grpcio.

        self.grpc = grpc
        self.pb, pb_grpc, self.admin_pb, admin_grpc = load_modules(proto_dir)
        if tls_ca or tls_cert:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(tls_ca) if tls_ca else None,
                private_key=read(tls_key) if tls_key else None,
                certificate_chain=read(tls_cert) if tls_cert else None)
            self.channel = grpc.secure_channel(target, credentials)
        else:
            self.channel = grpc.insecure_channel(target)
        self.inference = pb_grpc.InferenceStub(self.channel)
        self.admin = admin_grpc.AdminStub(self.channel)
        self.adapters_pb, adapters_grpc = load_adapter_modules(proto_dir)
        self.adapters = adapters_grpc.AdaptersStub(self.channel)
        self.training_pb, training_grpc = load_training_modules(proto_dir)
        self.training = training_grpc.TrainingStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.timeout = timeout

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, prompt, adapter="", max_tokens=None, temperature=None, top_k=0, top_p=None,
                seed=None, stop=(), logprobs=False, top_logprobs=0, request_id="", ignore_eos=False,
                prompt_token_ids=None, add_special_tokens=None):
        """Builds a GenerateRequest; unset optional values take the server's defaults."""
        sampling = self.pb.SamplingParams(top_k=top_k, stop=list(stop), logprobs=logprobs,
                                          top_logprobs=top_logprobs, ignore_eos=ignore_eos)
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if temperature is not None:
            sampling.temperature = temperature
        if top_p is not None:
            sampling.top_p = top_p
        if seed is not None:
            sampling.seed = seed
        req = self.pb.GenerateRequest(prompt=prompt, adapter=adapter, sampling=sampling,
                                      request_id=request_id, prompt_token_ids=prompt_token_ids or [])
        if add_special_tokens is not None:
            req.add_special_tokens = add_special_tokens
        return req

    def generate(self, prompt, **kwargs):
        """Returns a GenerateResponse (text, tokens, finish_reason, usage)."""
        return self.inference.Generate(self.request(prompt, **kwargs), timeout=self.timeout,
                                       metadata=self.metadata)

    def stream(self, prompt, **kwargs):
        """Yields GenerateStreamResponse chunks; the last carries finish_reason and usage.

        The returned iterator has ``cancel()``: call it to stop generation early.
        """
        return self.inference.GenerateStream(self.request(prompt, **kwargs), timeout=self.timeout,
                                             metadata=self.metadata)

    def score(self, prompt, continuations, adapter="", top_logprobs=0):
        """Returns a ScoreResponse with one ContinuationScore per continuation."""
        req = self.pb.ScoreRequest(prompt=prompt, continuations=list(continuations), adapter=adapter,
                                   top_logprobs=top_logprobs)
        return self.inference.Score(req, timeout=self.timeout, metadata=self.metadata)

    def score_ids(self, prompt_ids, continuation_ids, adapter="", top_logprobs=0):
        """Score by token ids (no special tokens added), for clients with their own tokenizer."""
        req = self.pb.ScoreRequest(
            prompt_token_ids=list(prompt_ids), adapter=adapter, top_logprobs=top_logprobs,
            continuation_token_ids=[self.pb.TokenIds(ids=list(c)) for c in continuation_ids])
        return self.inference.Score(req, timeout=self.timeout, metadata=self.metadata)

    def info(self):
        return self.admin.GetServerInfo(self.admin_pb.GetServerInfoRequest(), timeout=self.timeout,
                                        metadata=self.metadata)

    def stats(self):
        return self.admin.GetStats(self.admin_pb.GetStatsRequest(), timeout=self.timeout,
                                   metadata=self.metadata)

    def upload_messages(self, name, files, version=0, method="", chunk_bytes=1 << 20, sha256="",
                        progress=None):
        """Yields the UploadAdapterRequest messages for [(file name, bytes)]."""
        pb = self.adapters_pb
        header = pb.UploadHeader(name=name, version=version, method=method, sha256=sha256,
                                 total_size=sum(len(data) for _, data in files))
        for file_name, data in files:
            header.files.add(name=file_name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        yield pb.UploadAdapterRequest(header=header)
        sent, total = 0, header.total_size
        for file_name, data in files:
            for offset in range(0, len(data), chunk_bytes):
                piece = data[offset:offset + chunk_bytes]
                yield pb.UploadAdapterRequest(chunk=pb.FileChunk(file=file_name, offset=offset, data=piece))
                sent += len(piece)
                if progress:
                    progress(sent, total)

    def upload_adapter(self, name, source, version=0, method="", chunk_bytes=1 << 20, progress=None):
        """Uploads an adapter; `source` is a local directory or [(file name, bytes)].

        Returns the AdapterInfo of the new version. `progress(sent, total)` is
        called after each chunk.
        """
        if isinstance(source, (str, os.PathLike)):
            files = []
            for file_name, path in adapter_files_in(source):
                with open(path, "rb") as f:
                    files.append((file_name, f.read()))
        else:
            files = list(source)
        return self.adapters.UploadAdapter(
            self.upload_messages(name, files, version, method, chunk_bytes, progress=progress),
            timeout=self.timeout, metadata=self.metadata)

    def register_adapter(self, name, path, version=0, method=""):
        """Registers the adapter in a directory on the server (under --allowed-adapter-root)."""
        req = self.adapters_pb.RegisterAdapterRequest(name=name, path=path, version=version, method=method)
        return self.adapters.RegisterAdapter(req, timeout=self.timeout, metadata=self.metadata)

    def get_adapter(self, adapter):
        """AdapterInfo of "name" (latest) or "name@N"."""
        return self.adapters.GetAdapter(self.adapters_pb.GetAdapterRequest(adapter=adapter),
                                        timeout=self.timeout, metadata=self.metadata)

    def list_adapters(self, method="", name="", latest_only=False, page_size=100):
        """Yields every AdapterInfo, following the pages."""
        token = ""
        while True:
            req = self.adapters_pb.ListAdaptersRequest(page_size=page_size, page_token=token, method=method,
                                                       name=name, latest_only=latest_only)
            resp = self.adapters.ListAdapters(req, timeout=self.timeout, metadata=self.metadata)
            yield from resp.adapters
            token = resp.next_page_token
            if not token:
                return

    def delete_adapter(self, adapter, all_versions=False):
        """Deletes "name@N", or every version of "name" with all_versions=True."""
        req = self.adapters_pb.DeleteAdapterRequest(adapter=adapter, all_versions=all_versions)
        return self.adapters.DeleteAdapter(req, timeout=self.timeout, metadata=self.metadata)

    def load_adapter(self, adapter, pin=False):
        """Prefetches "name[@N]" into the engine's device tier; pin=True keeps it there."""
        req = self.adapters_pb.LoadAdapterRequest(adapter=adapter, pin=pin)
        return self.adapters.LoadAdapter(req, timeout=self.timeout, metadata=self.metadata)

    def unload_adapter(self, adapter):
        """Releases a pin made by load_adapter(pin=True)."""
        req = self.adapters_pb.UnloadAdapterRequest(adapter=adapter)
        return self.adapters.UnloadAdapter(req, timeout=self.timeout, metadata=self.metadata)

    def upload_dataset(self, source, name=None, chunk_bytes=1 << 20, progress=None):
        """Uploads a JSONL dataset: `source` is a local path or bytes. Returns its DatasetInfo."""
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                data = f.read()
            name = name or "".join(c if c.isalnum() or c in "._-" else "_"
                                   for c in os.path.splitext(os.path.basename(source))[0]).lstrip(".")
        else:
            data = bytes(source)
        pb = self.training_pb

        def messages():
            yield pb.UploadDatasetRequest(header=pb.DatasetHeader(
                name=name or "dataset", size=len(data), sha256=hashlib.sha256(data).hexdigest()))
            for offset in range(0, len(data), chunk_bytes):
                yield pb.UploadDatasetRequest(chunk=pb.DatasetChunk(
                    offset=offset, data=data[offset:offset + chunk_bytes]))
                if progress:
                    progress(min(offset + chunk_bytes, len(data)), len(data))

        return self.training.UploadDataset(messages(), timeout=self.timeout, metadata=self.metadata)

    def list_datasets(self, all_tenants=False, page_size=100):
        """Yields every DatasetInfo (newest first), following the pages."""
        token = ""
        while True:
            req = self.training_pb.ListDatasetsRequest(page_size=page_size, page_token=token,
                                                       all_tenants=all_tenants)
            resp = self.training.ListDatasets(req, timeout=self.timeout, metadata=self.metadata)
            yield from resp.datasets
            token = resp.next_page_token
            if not token:
                return

    def delete_dataset(self, dataset_id):
        req = self.training_pb.DeleteDatasetRequest(dataset_id=dataset_id)
        return self.training.DeleteDataset(req, timeout=self.timeout, metadata=self.metadata)

    def create_training_job(self, output_adapter, dataset_id, method="lora", config=None,
                            hyperparameters=None, init_adapter="", client_request_id=""):
        """Creates a job; returns its TrainingJob (QUEUED).

        `config` is a dict of the method's config message (e.g. LoraConfig:
        rank, alpha, target_modules), `hyperparameters` a dict of
        Hyperparameters (epochs, max_steps, batch_size, learning_rate, ...).
        """
        pb = self.training_pb
        field, message = TRAINING_METHODS[method]
        req = pb.CreateTrainingJobRequest(
            output_adapter=output_adapter, dataset_id=dataset_id, init_adapter=init_adapter,
            client_request_id=client_request_id,
            hyperparameters=pb.Hyperparameters(**(hyperparameters or {})))
        getattr(req, field).CopyFrom(getattr(pb, message)(**(config or {})))
        return self.training.CreateTrainingJob(req, timeout=self.timeout, metadata=self.metadata)

    def get_training_job(self, job_id):
        req = self.training_pb.GetTrainingJobRequest(job_id=job_id)
        return self.training.GetTrainingJob(req, timeout=self.timeout, metadata=self.metadata)

    def list_training_jobs(self, state=None, all_tenants=False, page_size=50):
        """Yields every TrainingJob (newest first); `state` e.g. "RUNNING"."""
        pb = self.training_pb
        token = ""
        while True:
            req = pb.ListTrainingJobsRequest(
                page_size=page_size, page_token=token, all_tenants=all_tenants,
                state=pb.TrainingJobState.Value("TRAINING_JOB_STATE_" + state.upper()) if state else 0)
            resp = self.training.ListTrainingJobs(req, timeout=self.timeout, metadata=self.metadata)
            yield from resp.jobs
            token = resp.next_page_token
            if not token:
                return

    def cancel_training_job(self, job_id):
        req = self.training_pb.CancelTrainingJobRequest(job_id=job_id)
        return self.training.CancelTrainingJob(req, timeout=self.timeout, metadata=self.metadata)

    def watch_training_job(self, job_id, timeout=None):
        """Yields the job's states as they change, ending with the final one.

        No deadline unless `timeout` (seconds) is given: jobs may run long.
        """
        req = self.training_pb.WatchTrainingJobRequest(job_id=job_id)
        yield from self.training.WatchTrainingJob(req, timeout=timeout, metadata=self.metadata)

    def wait_training_job(self, job_id, timeout=None):
        """The job's final TrainingJob (SUCCEEDED, FAILED or CANCELLED)."""
        last = None
        for last in self.watch_training_job(job_id, timeout=timeout):
            pass
        return last

    def job_state_name(self, value):
        """"QUEUED", "RUNNING", "SUCCEEDED", "FAILED" or "CANCELLED"."""
        return self.training_pb.TrainingJobState.Name(value).removeprefix("TRAINING_JOB_STATE_")

    def finish_reason_name(self, value):
        """"length", "stop", "eos" or "context_length"."""
        return self.pb.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()


def _to_dict(message):
    from google.protobuf import json_format
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _job_line(client, job):
    """One line: id, state, method, output, step/total, loss, result or error."""
    p = job.progress
    tail = job.result_adapter or (f"{job.error_code}: {job.error}" if job.error else "")
    return (f"{job.job_id}\t{client.job_state_name(job.state)}\t{job.method}\t{job.output_adapter}\t"
            f"{p.step}/{p.total_steps}\tloss {p.loss:.4f}\t{tail}")


def _watch(client, job_id, as_json):
    """Prints each update of the job; 0 if it SUCCEEDED, 1 if it FAILED or was CANCELLED."""
    last = None
    for last in client.watch_training_job(job_id):
        print(json.dumps(_to_dict(last)) if as_json else _job_line(client, last), flush=True)
    return 0 if last is not None and client.job_state_name(last.state) == "SUCCEEDED" else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=os.environ.get("ADAPTERD_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("ADAPTERD_TOKEN"))
    parser.add_argument("--tls-ca", default=os.environ.get("ADAPTERD_TLS_CA"),
                        help="PEM CA bundle: connect with TLS")
    parser.add_argument("--tls-cert", default=os.environ.get("ADAPTERD_TLS_CLIENT_CERT"),
                        help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default=os.environ.get("ADAPTERD_TLS_CLIENT_KEY"),
                        help="PEM client key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per call")
    parser.add_argument("--proto-dir", default=None, help=f"default: {DEFAULT_PROTO_DIR}")
    parser.add_argument("--json", action="store_true", help="print messages as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "stream"):
        p = sub.add_parser(name)
        p.add_argument("prompt")
        p.add_argument("--adapter", default="")
        p.add_argument("--max-tokens", type=int)
        p.add_argument("--temperature", type=float)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--stop", action="append", default=[])
    p = sub.add_parser("score")
    p.add_argument("prompt")
    p.add_argument("continuations", nargs="+")
    p.add_argument("--adapter", default="")
    sub.add_parser("info")
    sub.add_parser("stats")
    p = sub.add_parser("upload")
    p.add_argument("name")
    p.add_argument("directory")
    p.add_argument("--version", type=int, default=0)
    p.add_argument("--method", default="")
    p = sub.add_parser("list")
    p.add_argument("--method", default="")
    p = sub.add_parser("upload-dataset", help="upload a JSONL training dataset")
    p.add_argument("path")
    p.add_argument("--name", default=None)
    p = sub.add_parser("train", help="create a training job")
    p.add_argument("output_adapter")
    p.add_argument("dataset_id")
    p.add_argument("--method", default="lora", choices=sorted(TRAINING_METHODS))
    p.add_argument("--config", type=json.loads, default={},
                   help='the method\'s config message as JSON, e.g. \'{"rank": 8}\'')
    p.add_argument("--hyperparameters", type=json.loads, default={},
                   help='Hyperparameters as JSON, e.g. \'{"epochs": 3, "learning_rate": 0.02}\'')
    p.add_argument("--init-adapter", default="")
    p.add_argument("--request-id", default="", help="idempotency key: a retry returns the first job")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p = sub.add_parser("jobs", help="list training jobs, newest first")
    p.add_argument("--state", default=None, help="queued, running, succeeded, failed or cancelled")
    for name in ("job", "watch", "cancel"):
        sub.add_parser(name, help=f"{name} a training job").add_argument("job_id")
    args = parser.parse_args(argv)

    import grpc
    client = AdapterdClient(args.target, token=args.token, timeout=args.timeout, proto_dir=args.proto_dir,
                            tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        if args.command in ("generate", "stream"):
            kwargs = dict(adapter=args.adapter, max_tokens=args.max_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop)
            if args.command == "generate":
                response = client.generate(args.prompt, **kwargs)
                print(json.dumps(_to_dict(response)) if args.json else response.text)
            else:
                for chunk in client.stream(args.prompt, **kwargs):
                    if args.json:
                        print(json.dumps(_to_dict(chunk)), flush=True)
                    else:
                        print(chunk.text, end="", flush=True)
                if not args.json:
                    print()
        elif args.command == "score":
            response = client.score(args.prompt, args.continuations, adapter=args.adapter)
            if args.json:
                print(json.dumps(_to_dict(response)))
            else:
                for text, s in zip(args.continuations, response.scores):
                    print(f"{s.logprob:.6f}\t{'greedy' if s.is_greedy else '-'}\t{text}")
        elif args.command == "info":
            print(json.dumps(_to_dict(client.info()), indent=None if args.json else 2))
        elif args.command == "stats":
            print(json.dumps(_to_dict(client.stats()), indent=None if args.json else 2))
        elif args.command == "upload":
            def progress(sent, total):
                print(f"\rupload {args.name}: {sent}/{total} bytes", end="", file=sys.stderr, flush=True)
            info = client.upload_adapter(args.name, args.directory, version=args.version, method=args.method,
                                         progress=progress)
            print(file=sys.stderr)
            print(json.dumps(_to_dict(info)) if args.json else f"{info.name}@{info.version}\t{info.sha256}")
        elif args.command == "list":
            for info in client.list_adapters(method=args.method):
                print(json.dumps(_to_dict(info)) if args.json else
                      f"{info.name}@{info.version}\t{info.method}\t{info.size_bytes}\t{info.sha256}")
        elif args.command == "upload-dataset":
            info = client.upload_dataset(args.path, name=args.name)
            print(json.dumps(_to_dict(info)) if args.json else info.dataset_id)
        elif args.command == "train":
            job = client.create_training_job(
                args.output_adapter, args.dataset_id, method=args.method, config=args.config,
                hyperparameters=args.hyperparameters, init_adapter=args.init_adapter,
                client_request_id=args.request_id)
            print(json.dumps(_to_dict(job)) if args.json else job.job_id, flush=True)
            if args.watch:
                return _watch(client, job.job_id, args.json)
        elif args.command == "jobs":
            for job in client.list_training_jobs(state=args.state):
                print(json.dumps(_to_dict(job)) if args.json else _job_line(client, job))
        elif args.command == "job":
            job = client.get_training_job(args.job_id)
            print(json.dumps(_to_dict(job)) if args.json else _job_line(client, job))
        elif args.command == "watch":
            return _watch(client, args.job_id, args.json)
        elif args.command == "cancel":
            job = client.cancel_training_job(args.job_id)
            print(json.dumps(_to_dict(job)) if args.json else _job_line(client, job))
    except grpc.RpcError as e:
        print(f"adapterd_client: {e.code().name}: {e.details()}", file=sys.stderr)
        return e.code().value[0] or 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
