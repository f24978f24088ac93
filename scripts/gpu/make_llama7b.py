#!/usr/bin/env python3
"""Writes a Llama-7B-shaped model with seeded random bf16 weights (hidden 4096,
32 layers, 32 heads, MLP 11008, vocab 32000) and N rank-16 LoRA adapters on
q/k/v/o in HF PEFT format, for the GPU decode benchmark (scripts/gpu/decode.sh).

  make_llama7b.py OUT_DIR TOKENIZER_JSON [--adapters 128] [--layers 32]

OUT_DIR/model: config.json, model.safetensors, tokenizer.json (the tiny
fixture tokenizer: the benchmark feeds token ids); OUT_DIR/adapters/aK.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

HIDDEN, HEADS, INTER, VOCAB, RANK = 4096, 32, 11008, 32000, 16


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("tokenizer")
    p.add_argument("--adapters", type=int, default=128)
    p.add_argument("--layers", type=int, default=32)
    args = p.parse_args()
    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": args.layers,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "head_dim": HIDDEN // HEADS,
        "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    shutil.copy(args.tokenizer, os.path.join(model_dir, "tokenizer.json"))

    g = torch.Generator(device="cuda").manual_seed(1234)

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, device="cuda") * std).to(torch.bfloat16).cpu()

    t = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "lm_head.weight": rand(VOCAB, HIDDEN),
         "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}
    for i in range(args.layers):
        pre = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[pre + f"self_attn.{name}.weight"] = rand(HIDDEN, HIDDEN)
        t[pre + "mlp.gate_proj.weight"] = rand(INTER, HIDDEN)
        t[pre + "mlp.up_proj.weight"] = rand(INTER, HIDDEN)
        t[pre + "mlp.down_proj.weight"] = rand(HIDDEN, INTER)
        t[pre + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
        t[pre + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    save_file(t, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    del t

    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 32,
        "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "base_model_name_or_path": model_dir,
    }
    for k in range(args.adapters):
        d = os.path.join(args.out, "adapters", f"a{k}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f, indent=1)
        w = {}
        for i in range(args.layers):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                pre = f"base_model.model.model.layers.{i}.self_attn.{name}."
                w[pre + "lora_A.weight"] = rand(RANK, HIDDEN, std=HIDDEN ** -0.5)
                w[pre + "lora_B.weight"] = rand(HIDDEN, RANK, std=0.01)
        save_file(w, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {model_dir} and {args.adapters} adapters", flush=True)


if __name__ == "__main__":
    main()
