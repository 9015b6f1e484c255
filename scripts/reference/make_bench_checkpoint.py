#!/usr/bin/env python3
"""A random model of a real config's shape saved as the Hub ships it, for measuring
load time and peak memory (`ember bench --mode load --model DIR`).

python make_bench_checkpoint.py --config bench/configs/qwen3-0.6b.json --dtype bf16 --out DIR \
    [--tokenizer-json crates/ember-tokenizer/assets/gpt2-tokenizer.json]
Writes DIR/{config.json, model.safetensors (sharded above --max-shard-size), tokenizer.json}:
the tokenizer is the given one (GPT-2's gives prompts of realistic length: a load test's
prefill depends on it), else a byte-level BPE of the byte alphabet alone (one token per
byte), enough for Ember to load the directory.
"""
import argparse
import shutil

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
ap.add_argument("--out", required=True)
ap.add_argument("--max-shard-size", default="5GB")
ap.add_argument("--tokenizer-json")
a = ap.parse_args()
torch.manual_seed(0)
cfg = AutoConfig.from_pretrained(a.config)
dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
model.save_pretrained(a.out, max_shard_size=a.max_shard_size)
byte_level = Tokenizer(models.BPE(vocab={chr(i): i for i in range(256)}, merges=[]))
byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
byte_level.decoder = decoders.ByteLevel()
PreTrainedTokenizerFast(tokenizer_object=byte_level).save_pretrained(a.out)
if a.tokenizer_json:
    shutil.copy(a.tokenizer_json, f"{a.out}/tokenizer.json")
print(a.out)
