#!/usr/bin/env python3
"""The HF PEFT counterpart of bench/train_bench: LoRA training tokens/s on the
same model, JSONL data, rows per batch, loss and optimizer (fp32, CPU).

Rows are tokenised as engine/training/dataset.cc does (prompt with special
tokens + completion without + EOS; loss on completion + EOS), taken in file
order, batch_size rows per step, padded to the batch's longest row as a
transformers data collator does (the engine packs rows without padding; both
count real tokens only). One JSON line like train_bench's.
"""

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--max-seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    import peft

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    eos = next((tok.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>")
                if tok.token_to_id(t) is not None), None)
    rows = []
    with open(a.data) as f:
        for line in f:
            r = json.loads(line)
            p = tok.encode(r["prompt"], add_special_tokens=True).ids
            c = tok.encode(r["completion"], add_special_tokens=False).ids + ([eos] if eos is not None else [])
            ids = (p + c)[:a.max_seq]
            rows.append((ids, len(p)))
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", r=a.rank, lora_alpha=2 * a.rank,
                          target_modules=a.targets if a.targets == "all-linear" else a.targets.split(","))
    model = peft.get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    cursor, tokens, start, timed_tokens = 0, 0, None, 0
    for step in range(a.steps):
        if step == a.warmup:
            start, timed_tokens = time.perf_counter(), 0
        if cursor >= len(rows):
            cursor = 0
        batch = rows[cursor:cursor + a.batch]
        cursor += len(batch)
        longest = max(len(ids) for ids, _ in batch)
        input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        labels = torch.full((len(batch), longest), -100, dtype=torch.long)
        for i, (ids, lb) in enumerate(batch):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
            labels[i, lb:len(ids)] = torch.tensor(ids[lb:])
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
        n = int((shift_labels != -100).sum())
        loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum") / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        timed_tokens += sum(len(ids) for ids, _ in batch)
    seconds = time.perf_counter() - start
    timed = a.steps - a.warmup
    print(json.dumps({"tokens_per_second": round(timed_tokens / seconds, 1),
                      "step_ms": round(1000 * seconds / timed, 2), "steps": timed,
                      "tokens": timed_tokens, "final_loss": round(float(loss.detach()), 5)}))


if __name__ == "__main__":
    main()
