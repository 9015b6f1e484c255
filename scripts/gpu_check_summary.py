#!/usr/bin/env python3
"""The table of scripts/gpu-check.sh: reads OUT/bench.jsonl and OUT/steps.txt, prints
markdown (Ember beside PyTorch / transformers, with the ratio; higher is faster).

python3 scripts/gpu_check_summary.py OUT
"""
import json
import sys
from pathlib import Path


def speed(record):
    """Tokens/s of a record: training tokens/s, or new tokens/s with the KV cache."""
    if "tokens_per_s" in record:
        return record["tokens_per_s"]
    if isinstance(record.get("kv_cache"), dict):
        return record["kv_cache"].get("new_tokens_per_s")
    return record.get("new_tokens_per_s")


def main():
    out = Path(sys.argv[1])
    records = {}
    for line in (out / "bench.jsonl").read_text().splitlines():
        entry = json.loads(line)
        records[entry["step"]] = entry["record"]
    steps = (out / "steps.txt").read_text().splitlines() if (out / "steps.txt").exists() else []

    print("## Parity (tests/parity.rs)\n")
    for line in steps:
        if "] parity-" in line:
            print(f"- {line.split('] ', 1)[1]}")
    print()
    print("| measurement | Ember | reference | Ember / reference |")
    print("|---|---:|---:|---:|")
    rows = [
        ("training step, gpt2-small 2 x 256, f32 (tokens/s)", "train-f32-ember", "train-f32-pytorch"),
        ("training step, gpt2-small 2 x 256, bf16 (tokens/s)", "train-bf16-ember", "train-bf16-pytorch"),
        ("greedy generation, gpt2-small, KV cache (new tokens/s)", "generate-ember", "generate-pytorch"),
        ("Qwen3-0.6B shape, f32 weights (new tokens/s)", "qwen3-f32-ember", "qwen3-f32-transformers"),
        ("Qwen3-0.6B shape, bf16 weights (new tokens/s)", "qwen3-bf16-ember", "qwen3-bf16-transformers"),
    ]
    for label, ours, theirs in rows:
        a = speed(records.get(ours, {}))
        b = speed(records.get(theirs, {}))
        cell = lambda v: f"{v:,.1f}" if v else "failed (see its .log)"
        ratio = f"{a / b:.2f}x" if a and b else "-"
        print(f"| {label} | {cell(a)} | {cell(b)} | {ratio} |")
    print()
    failed = [line.split("] ", 1)[1] for line in steps
              if "FAILED" in line or "TIMED OUT" in line or "SKIPPED" in line]
    if failed:
        print("Steps that did not finish:\n")
        for line in failed:
            print(f"- {line}")


if __name__ == "__main__":
    main()
