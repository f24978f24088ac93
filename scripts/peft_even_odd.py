"""HF PEFT's side of tests/training/learning_test.cc: trains one adapter
(prefix tuning, prompt tuning, P-tuning or LoRA) with transformers + PEFT on
"three-digit number -> even/odd" (the same 300 training and 100 held-out
numbers: 100..999 shuffled by Python's random.Random(3)) and prints the mean
loss and the train/held-out exact match of greedy generation every 5 epochs.
Rows as engine/training/dataset.h builds them: prompt with special tokens +
completion without + EOS, loss on the completion and EOS. AdamW (no weight
decay), linear schedule with warmup, gradients clipped to norm 1.
  python scripts/peft_even_odd.py --model build/fixtures/models/llama \
      --method prefix --tokens 16 --lr 1e-2 --epochs 30 [--even even --odd odd]
"""
import argparse
import json
import math
import random
import torch
from tokenizers import Tokenizer
import transformers
import peft

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--method", default="prefix")
ap.add_argument("--tokens", type=int, default=16)
ap.add_argument("--lr", type=float, default=1e-2)
ap.add_argument("--epochs", type=int, default=30)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--projection", action="store_true")
ap.add_argument("--hidden", type=int, default=0)  # Encoder width; 0: PEFT's default.
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--even", default=" even")
ap.add_argument("--odd", default=" odd")
a = ap.parse_args()
torch.manual_seed(a.seed)
tok = Tokenizer.from_file(a.model + "/tokenizer.json")
cfg = json.load(open(a.model + "/config.json"))
eos = cfg["eos_token_id"]

nums = list(range(100, 1000))
random.Random(3).shuffle(nums)
train, held = nums[:300], nums[300:400]
comp = lambda n: (a.even if n % 2 == 0 else a.odd)

def row(n):
    p = tok.encode(str(n), add_special_tokens=True).ids
    c = tok.encode(comp(n), add_special_tokens=False).ids
    return p + c + [eos], len(p)

model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
hidden = {"encoder_hidden_size": a.hidden} if a.hidden else {}
if a.method == "prefix":
    pc = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.tokens,
                                 prefix_projection=a.projection, **hidden)
elif a.method == "prompt":
    pc = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.tokens)
elif a.method == "ptuning":
    pc = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.tokens, **hidden)
elif a.method == "lora":
    pc = peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear")
m = peft.get_peft_model(model, pc)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
steps = a.epochs * math.ceil(len(train) / a.batch)
sched = transformers.get_linear_schedule_with_warmup(opt, a.warmup, steps)
rng = random.Random(a.seed)

def batch(ns):
    rows = [row(n) for n in ns]
    L = max(len(r) for r, _ in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    att = torch.zeros(len(rows), L, dtype=torch.long)
    lab = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, (r, pl) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r); att[i, :len(r)] = 1
        lab[i, pl:len(r)] = torch.tensor(r[pl:])
    return ids, att, lab

def exact(ns):
    m.eval(); hits = 0
    with torch.no_grad():
        for n in ns:
            p = tok.encode(str(n), add_special_tokens=True).ids
            want = tok.encode(comp(n), add_special_tokens=False).ids
            ids = torch.tensor([p])
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(want),
                             do_sample=False, pad_token_id=eos)
            hits += out[0, len(p):].tolist() == want
    m.train(); return hits / len(ns)

print("base", exact(held), flush=True)
for ep in range(a.epochs):
    order = train[:]; rng.shuffle(order); tot = 0
    for i in range(0, len(order), a.batch):
        ids, att, lab = batch(order[i:i + a.batch])
        loss = m(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
        opt.step(); sched.step(); tot += loss.item()
    if ep % 5 == 4 or ep == a.epochs - 1:
        print(f"epoch {ep+1} loss {tot / math.ceil(len(order)/a.batch):.4f} train_em {exact(train[:100]):.2f} held_em {exact(held):.2f}", flush=True)
