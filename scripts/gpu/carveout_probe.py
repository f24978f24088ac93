"""Can a LoRA run *beside* the base GEMM if cuBLAS is told to leave SMs free?

On the GPU machine: python3 scripts/gpu/carveout_probe.py
Prints, for the 4096x4096 bf16 projection at 32 rows, per CUDA-graph iteration
(weights and side bytes rotate through more than L2 holds):
  base     torch.mm with the SM carve-out c (cuBLASLt, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET)
  +add     base, then a y += d kernel (the join's cost alone)
  +side    base with a c-CTA kernel reading 8.4 MB (T=32, N=32 rank-16 A and B bytes)
           on a forked stream, joined, then y += d
and the kernels cuBLAS runs for each c."""
import json
import statistics
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

dev = "cuda"
torch.backends.cuda.preferred_blas_library("cublaslt")
sms = torch.cuda.get_device_properties(0).multi_processor_count
M, N, K = 32, 4096, 4096
ITERS = 64
NW = 8
ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) / 64 for _ in range(NW)]
xs = [torch.randn(M, K, device=dev, dtype=torch.bfloat16) for _ in range(ITERS)]
y = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
d = torch.zeros(M, N, device=dev, dtype=torch.float32)
SIDE_BYTES = 32 * 2 * 16 * 4096 * 2  # 32 adapters x (A + B) x rank 16 x 4096 x bf16
pool_slices = 48
pool = torch.randn(pool_slices * SIDE_BYTES // 2, device=dev, dtype=torch.bfloat16)
sink = torch.zeros(1024, device=dev, dtype=torch.float32)

if triton is not None:
    @triton.jit
    def side_read(src, n_elems, out, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(pid * BLOCK, n_elems, nprog * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(src + offs, mask=offs < n_elems, other=0.0).to(tl.float32)
        tl.store(out + pid, tl.sum(acc))

    def side(i, ctas):
        base = pool[(i % pool_slices) * (SIDE_BYTES // 2):]
        side_read[(ctas,)](base, SIDE_BYTES // 2, sink, BLOCK=4096, num_warps=16)


def add_join():
    y.add_(d)  # bf16 += fp32 -> one elementwise kernel


def timed(body, reps=15):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(ITERS):
            body(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(ITERS):
            body(i)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / ITERS)
    return statistics.median(times)


def kernels(c):
    torch._C._set_sm_carveout_experimental(c)
    for _ in range(3):
        torch.mm(xs[0], ws[0].t(), out=y)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.mm(xs[0], ws[0].t(), out=y)
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    out = []
    for e in trace["traceEvents"]:
        if e.get("cat") == "kernel":
            a = e.get("args", {})
            out.append(f"grid={a.get('grid')} block={a.get('block')} smem={a.get('shared memory')} "
                       f"{e['name'][:70]}")
    return out


print(f"SMs {sms}; torch {torch.__version__}; triton {'yes' if triton else 'no'}")
print(f"{'carve':>5} | {'base':>7} {'+add':>7} {'+side':>7} {'side_add':>8} | kernels")
for c in [None, 0, 8, 16, 24, 32, 48]:
    torch._C._set_sm_carveout_experimental(c)
    gemm = lambda i: torch.mm(xs[i], ws[i % NW].t(), out=y)
    base = timed(gemm)
    plus_add = timed(lambda i: (gemm(i), add_join()))
    plus_side = float("nan")
    if triton is not None and c:
        def body(i, c=c):
            main = torch.cuda.current_stream()
            side_s = side_streams[0]
            side_s.wait_stream(main)
            with torch.cuda.stream(side_s):
                side(i, c)
            gemm(i)
            main.wait_stream(side_s)
            add_join()
        side_streams = [torch.cuda.Stream()]
        plus_side = timed(body)
    ks = kernels(c)
    print(f"{str(c):>5} | {base:7.2f} {plus_add:7.2f} {plus_side:7.2f} "
          f"{(plus_side - base) / base * 100:7.0f}% | {' ; '.join(ks)}")

# The side kernel alone, for its time on c SMs.
torch._C._set_sm_carveout_experimental(None)
if triton is not None:
    for c in [8, 16, 24, 32, 132]:
        print(f"side alone on {c:3d} CTAs: {timed(lambda i: side(i, c)):.2f} us")
