#!/usr/bin/env python3
"""Fails on a forbidden include edge (DESIGN.md §2, the torch/protobuf wall).

Rules:
  - torch/ATen/c10 headers only under engine/ (and tests/bench that build against the engine internals);
  - engine/api/ headers are torch-free;
  - <torch/torch.h> nowhere (17 s per translation unit);
  - generated protobuf headers (*.pb.h) only under server/, client/ and their tests;
  - server/ and client/ reach the engine only through engine/api/;
  - adapters_store/ depends on neither the engine nor server/ nor client/.
Before checking the real tree, the script proves each rule fires on a synthetic violation.
"""
import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
TORCH = re.compile(r"^(torch|ATen|c10)/")
SOURCE_EXT = (".h", ".hpp", ".cc", ".cpp", ".cu", ".cuh")
TORCH_OK = ("engine/", "tests/model/", "tests/runtime/", "tests/peft/", "tests/kernels/", "tests/training/",
            "bench/")
PROTO_OK = ("server/", "client/", "tests/server/", "tests/e2e/")


def violations(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "build")) and d != "third_party"]
        for name in filenames:
            if not name.endswith(SOURCE_EXT):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            for inc in INCLUDE.findall(text):
                if inc == "torch/torch.h":
                    found.append(f"{rel}: includes <torch/torch.h>; use narrow ATen headers")
                if TORCH.match(inc):
                    if not rel.startswith(TORCH_OK):
                        found.append(f"{rel}: torch header {inc} outside engine/")
                    elif rel.startswith("engine/api/"):
                        found.append(f"{rel}: engine/api must be torch-free ({inc})")
                if inc.endswith(".pb.h") and not rel.startswith(PROTO_OK):
                    found.append(f"{rel}: generated protobuf header {inc} below server/ and client/")
                if rel.startswith("adapters_store/") and inc.startswith(("engine/", "server/", "client/")):
                    found.append(f"{rel}: adapters_store must not depend on {inc}")
                if (rel.startswith(("server/", "client/")) and inc.startswith("engine/")
                        and not inc.startswith("engine/api/")):
                    found.append(f"{rel}: reaches engine internals ({inc}); use engine/api/")
    return found


def self_test():
    cases = {
        "server/a.cc": "#include <ATen/ATen.h>\n",
        "engine/api/b.h": "#include <c10/core/Device.h>\n",
        "engine/c.cc": "#include <torch/torch.h>\n",
        "adapters_store/d.cc": '#include "adapterd/v1/inference.pb.h"\n',
        "client/e.cc": '#include "engine/model/causal_lm.h"\n',
        "adapters_store/f.cc": '#include "engine/model/safetensors.h"\n',
    }
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in cases.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        found = violations(tmp)
    for rel in cases:
        if not any(v.startswith(rel) for v in found):
            print(f"self-test: the rule for {rel} did not fire")
            return False
    return True


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    if not self_test():
        return 1
    found = violations(root)
    for v in found:
        print(v)
    print(f"layering: {len(found)} violation(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
