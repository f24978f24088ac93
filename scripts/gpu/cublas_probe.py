"""Which kernels cuBLAS runs for the decode projections (torch.mm, bf16): their
names, grids, blocks, registers and shared memory, from the torch profiler's
trace. On the GPU machine: python3 scripts/gpu/cublas_probe.py [rows...]"""
import json
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

rows = [int(r) for r in sys.argv[1:]] or [8, 32]
shapes = {"o 4096x4096": (4096, 4096), "qkv 12288x4096": (12288, 4096),
          "down 4096x11008": (4096, 11008)}
for name, (n, k) in shapes.items():
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            torch.mm(x, w.t())
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.mm(x, w.t())
            torch.cuda.synchronize()
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            prof.export_chrome_trace(f.name)
            trace = json.load(open(f.name))
        for e in trace["traceEvents"]:
            if e.get("cat") != "kernel":
                continue
            a = e.get("args", {})
            print(f"{name:16s} M={m:3d} {e['dur']:7.2f}us grid={a.get('grid')} "
                  f"block={a.get('block')} regs={a.get('registers per thread')} "
                  f"smem={a.get('shared memory')} {e['name'][:140]}")
