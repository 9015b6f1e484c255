#!/usr/bin/env python3
"""References for the tiny Llama 3 and Qwen3 fixtures as transformers computes them after
`AutoModelForCausalLM.from_pretrained(dir)` (float32), the way a user runs the models.

Why: the shared fixtures' `expected.safetensors` were computed from a model that had been
cast to bfloat16 and back (`make_modern_fixtures.py`: `model.to(dtype)` ... `model.float()`),
which also rounds the rotary embedding's `inv_freq` buffer to bfloat16. transformers itself,
loading the same directory, computes `inv_freq` in float32 and its logits differ from that file
by up to 1e-3 for tiny-llama3 (bf16 weights; tiny-qwen3 is stored in f32 and agrees).
Second, the shared greedy tokens were generated with `pad_token_id=0` and no attention mask:
tiny-llama3's beginning-of-text token is id 0, so `generate` inferred it to be padding,
masked it out and shifted every position (its greedy tokens then differ from greedy decoding
of the model, which transformers' own full forward pass shows). Here every generation gets an
explicit all-ones attention mask. This
script records what transformers gives on load: logits of both prompts, 24 greedy tokens with
the KV cache and no end-of-text stop, the chat prompt's greedy reply until an end-of-text
token, and the mean next-token loss of the loss text, with the largest difference from the
shared file for each.

Usage: python scripts/reference/modern_as_loaded.py [FIXTURES_DIR]   (default tests/fixtures)
Writes FIXTURES_DIR/<model>/as-loaded.json and as-loaded.safetensors.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
torch.manual_seed(0)
root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
for name in ["tiny-llama3", "tiny-qwen3"]:
    d = os.path.join(root, name)
    cases = json.load(open(os.path.join(d, "cases.json")))
    shared = load_file(os.path.join(d, "expected.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "prompts": []}
    tensors = {}
    with torch.no_grad():
        for i, p in enumerate(cases["prompts"]):
            x = torch.tensor([p["ids"]])
            logits = model(x).logits[0]
            tensors[f"logits_{i}"] = logits.contiguous()
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24,
                                 do_sample=False, eos_token_id=None, pad_token_id=None,
                                 use_cache=True)[0, len(p["ids"]):].tolist()
            # Greedy decoding by hand, full forward passes: the same tokens.
            manual = list(p["ids"])
            for _ in range(24):
                manual.append(int(model(torch.tensor([manual])).logits[0, -1].argmax()))
            assert manual[len(p["ids"]):] == gen, (name, i)
            top2 = logits.topk(2, dim=-1).values
            out["prompts"].append({
                "ids": p["ids"],
                "greedy_24": gen,
                "max_abs_diff_from_shared_logits": float((logits - shared[f"logits_{i}"]).abs().max()),
                "greedy_equals_shared": gen == p["greedy_24"],
                "smallest_top2_gap": float((top2[:, 0] - top2[:, 1]).min()),
            })
        chat_ids = cases["chat"]["ids"]
        eos = model.generation_config.eos_token_id
        x = torch.tensor([chat_ids])
        reply = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16,
                               do_sample=False, eos_token_id=eos, pad_token_id=None,
                               use_cache=True)[0, len(chat_ids):].tolist()
        out["chat"] = {"ids": chat_ids, "greedy_16_until_eos": reply,
                       "equals_shared": reply == cases["chat"]["greedy_16_until_eos"]}
        ids = torch.tensor([cases["prompts"][1]["ids"]])
        out["loss"] = {"mean_next_token_loss": float(model(ids, labels=ids).loss),
                       "shared": cases["loss"]["mean_next_token_loss"]}
    save_file(tensors, os.path.join(d, "as-loaded.safetensors"))
    json.dump(out, open(os.path.join(d, "as-loaded.json"), "w"), indent=1)
    print(name, json.dumps({k: v for k, v in out.items() if k != "prompts"}),
          [(p["max_abs_diff_from_shared_logits"], p["greedy_equals_shared"]) for p in out["prompts"]])

# transformers 5's own form of the configs (`rope_parameters` instead of `rope_theta` and
# `rope_scaling`), as `save_pretrained` writes it today: config-v5.json beside config.json.
import tempfile  # noqa: E402

from transformers import AutoConfig  # noqa: E402

for name in ["tiny-llama3", "tiny-qwen3"]:
    d = os.path.join(root, name)
    with tempfile.TemporaryDirectory() as tmp:
        AutoConfig.from_pretrained(d).save_pretrained(tmp)
        v5 = json.load(open(os.path.join(tmp, "config.json")))
    assert "rope_parameters" in v5 and "rope_scaling" not in v5, v5.keys()
    json.dump(v5, open(os.path.join(d, "config-v5.json"), "w"), indent=2, sort_keys=True)
    print(name, "config-v5.json rope_parameters", v5["rope_parameters"])
