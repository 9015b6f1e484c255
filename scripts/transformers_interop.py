#!/usr/bin/env python3
"""Checks that transformers loads models Ember saved and computes what Ember computes.

For each model directory given: `AutoTokenizer` and `AutoModelForCausalLM.from_pretrained`
(float32), then for a prompt the prompt ids, 16 greedy tokens (explicit attention mask, no
end-of-text stop), the mean next-token loss of a text, and the largest difference between
its logits of the text and Ember's (`ember perplexity --logits-out DIR/ember-logits.safetensors`),
printed as one JSON object per model. `ember generate --json --no-stop` and `ember perplexity
--json` on the same directory must give the same ids, the same loss (within 1e-5 relative) and
logits within 1e-4; scripts/transformers_interop.sh runs both sides and compares.

Usage: python scripts/transformers_interop.py PROMPT TEXT_FILE DIR [DIR ...]
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
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
        out = model(t, labels=t)
        loss = float(out.loss)
        # Ember's logits of the same text, without its last token (what the loss reads).
        ember = load_file(os.path.join(d, "ember-logits.safetensors"))["logits"]
        theirs = out.logits[0, : ember.shape[0]]
        diff = float((theirs - ember).abs().max()) if theirs.shape == ember.shape else float("inf")
    print(json.dumps({"dir": d, "prompt_ids": ids, "generated_ids": gen, "loss": loss,
                      "max_logit_diff": diff}))
