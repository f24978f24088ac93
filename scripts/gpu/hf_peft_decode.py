#!/usr/bin/env python3
"""HF transformers + PEFT on the decode benchmark's shapes (scripts/gpu/decode.sh):
batch B, prompt P tokens, greedy `generate`, for the base model, every row on one
adapter, and B distinct adapters in one batch (`adapter_names`). Prints the same
columns as bench/gpu_decode_bench: tokens/s over the whole generate call, prefill
time, and decode ms/step = (t(N) - t(1)) / (N - 1).

  hf_peft_decode.py MODEL_DIR ADAPTERS_DIR [--batch 32] [--prompt 128] [--new 64]
                    [--mixed-new 16]
"""
import argparse
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

import peft
from peft import PeftModel


def timed_generate(model, ids, new_tokens, **kw):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return time.perf_counter() - start


def warm_gpu():
    """~1 s of large GEMMs: out of idle clocks before each case (as gpu_decode_bench)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def measure(name, model, ids, new_tokens, **kw):
    timed_generate(model, ids, 2, **kw)  # Warm-up.
    warm_gpu()
    t1 = timed_generate(model, ids, 1, **kw)
    tn = timed_generate(model, ids, new_tokens, **kw)
    b = ids.shape[0]
    print(f"HF   {name:<28} {b * new_tokens / tn:10.1f} {1000 * (tn - t1) / (new_tokens - 1):10.2f}"
          f" {1000 * t1:10.1f} {new_tokens:6d}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("adapters")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--mixed-new", type=int, default=16)
    args = p.parse_args()
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 32000, (args.batch, args.prompt), generator=g).cuda()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, device_map="cuda")
    model.eval()
    print(f"{'':5}{'case':<28} {'tokens/s':>10} {'ms/step':>10} {'prefill_ms':>10} {'new':>6}")
    with torch.inference_mode():
        # The first case after start-up runs slow whatever it is: a throwaway pass.
        measure("(warm-up) base", model, ids, args.new)
        measure("(a) base", model, ids, args.new)
        model = PeftModel.from_pretrained(model, f"{args.adapters}/a0", adapter_name="a0")
        model.eval()
        measure("(b) one adapter", model, ids, args.new)
        for k in range(1, args.batch):
            model.load_adapter(f"{args.adapters}/a{k}", adapter_name=f"a{k}")
        names = [f"a{k}" for k in range(args.batch)]
        measure(f"(c) {args.batch} distinct adapters", model, ids, args.mixed_new,
                adapter_names=names)


if __name__ == "__main__":
    main()
