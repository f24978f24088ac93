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

From the shell::

    python3 client/python/adapterd_client.py --target 127.0.0.1:50051 generate "Hello" --max-tokens 20
    python3 client/python/adapterd_client.py stream "Hello" --max-tokens 20
    python3 client/python/adapterd_client.py score "The cat" " sat" " flew"
    python3 client/python/adapterd_client.py info
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
_PROTOS = ("adapterd/v1/inference.proto", "adapterd/v1/admin.proto")


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


class AdapterdClient:
    """Blocking client for the Inference and Admin services.

    Errors raise ``grpc.RpcError``; ``e.code()`` is the status code and
    ``e.details()`` the server's message.
    """

    def __init__(self, target="127.0.0.1:50051", token=None, timeout=None, proto_dir=None):
        import grpc  # Imported here so that --help works without grpcio.

        self.grpc = grpc
        self.pb, pb_grpc, self.admin_pb, admin_grpc = load_modules(proto_dir)
        self.channel = grpc.insecure_channel(target)
        self.inference = pb_grpc.InferenceStub(self.channel)
        self.admin = admin_grpc.AdminStub(self.channel)
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

    def finish_reason_name(self, value):
        """"length", "stop", "eos" or "context_length"."""
        return self.pb.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()


def _to_dict(message):
    from google.protobuf import json_format
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=os.environ.get("ADAPTERD_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("ADAPTERD_TOKEN"))
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
    args = parser.parse_args(argv)

    import grpc
    client = AdapterdClient(args.target, token=args.token, timeout=args.timeout, proto_dir=args.proto_dir)
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
    except grpc.RpcError as e:
        print(f"adapterd_client: {e.code().name}: {e.details()}", file=sys.stderr)
        return e.code().value[0] or 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
