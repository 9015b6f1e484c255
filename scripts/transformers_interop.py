#!/usr/bin/env python3
"""Checks that transformers loads models Ember saved and computes what Ember computes.

For each model directory given: `AutoTokenizer` and `AutoModelForCausalLM.from_pretrained`
(float32), then for a prompt the prompt ids, 16 greedy tokens (explicit attention mask, no
end-of-text stop) and the mean next-token loss of a text, printed as one JSON object per model.
`ember generate --json --no-stop` and `ember perplexity --json` on the same directory must give
the same ids and the same loss (within 1e-5 relative); scripts/transformers_interop.sh runs both
sides and compares.

Usage: python scripts/transformers_interop.py PROMPT TEXT_FILE DIR [DIR ...]
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
prompt, text_file, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(text_file, encoding="utf-8").read()
for d in dirs:
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = tok(prompt)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                             eos_token_id=None, pad_token_id=None)[0, len(ids):].tolist()
        t = torch.tensor([tok(text)["input_ids"]])
        loss = float(model(t, labels=t).loss)
    print(json.dumps({"dir": d, "prompt_ids": ids, "generated_ids": gen, "loss": loss}))
