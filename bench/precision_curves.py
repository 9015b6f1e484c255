#!/usr/bin/env python3
"""Loss curves of fp32 and bf16 mixed-precision training, side by side.

Runs `ember pretrain` (the binary given by --ember) with `train.precision` fp32 and bf16:
- the book's chapter 5 run (`--preset book`: gpt2-small, 90 steps), seed 123, both
  precisions (and fp32 with seed 124, the size of a change of seed);
- the small configuration of docs/results/seed-spread-2026-11-30 (context 64, width 64,
  4 heads, 2 layers, 360 steps), seeds 123-127, both precisions.
Writes one JSON file (every evaluation of every run and a summary) to --out, and with
matplotlib installed, a plot of the book run's curves beside it.

    python3 bench/precision_curves.py --ember target/release/ember --out docs/results/DIR
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

SMALL = [
    "--set", "model.context_length=64", "--set", "model.n_heads=4",
    "--set", "model.emb_dim=64", "--set", "model.n_layers=2",
]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor()


def run(ember, precision, seed, extra, workdir):
    out = os.path.join(workdir, f"{precision}-{seed}-{len(extra)}")
    cmd = [ember, "pretrain", "--preset", "book", "--data", "datasets/the-verdict.txt",
           "--quiet", "--out", out, "--set", f"train.seed={seed}",
           "--set", f"train.precision={precision}"] + extra
    start = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "EMBER_LOG": "warn"})
    seconds = time.time() - start
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    evals = [[l["step"], l["eval_train_loss"], l["val_loss"]]
             for l in lines if l.get("val_loss") is not None]
    return {
        "precision": precision, "seed": seed, "seconds": round(seconds, 1),
        "steps": lines[-1]["step"],
        "final_train_loss": evals[-1][1], "final_val_loss": evals[-1][2],
        "evals": evals,
        "command": " ".join(cmd[1:]).replace(out, "RUN_DIR"),
    }


def spread(runs, key):
    values = [r[key] for r in runs]
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values),
            "min": min(values), "max": max(values)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ember", default="target/release/ember")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=5)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    result = {"cpu": cpu_name(), "book": [], "small": []}
    with tempfile.TemporaryDirectory() as work:
        for precision, seed in [("fp32", 123), ("bf16", 123), ("fp32", 124)]:
            result["book"].append(run(a.ember, precision, seed, [], work))
            print(json.dumps({k: v for k, v in result["book"][-1].items() if k != "evals"}), flush=True)
        for precision in ["fp32", "bf16"]:
            for seed in range(123, 123 + a.seeds):
                result["small"].append(run(a.ember, precision, seed, SMALL, work))
                print(json.dumps({k: v for k, v in result["small"][-1].items() if k != "evals"}), flush=True)
    result["summary"] = {
        precision: {key: spread([r for r in result["small"] if r["precision"] == precision], key)
                    for key in ["final_train_loss", "final_val_loss"]}
        for precision in ["fp32", "bf16"]
    }
    with open(os.path.join(a.out, "precision_curves.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {("fp32", 123): "-", ("bf16", 123): "--", ("fp32", 124): ":"}
    for r in result["book"]:
        steps = [e[0] for e in r["evals"]]
        label = f'{r["precision"]}, seed {r["seed"]}'
        ax.plot(steps, [e[1] for e in r["evals"]], styles[(r["precision"], r["seed"])],
                color="C0", label=f"train, {label}")
        ax.plot(steps, [e[2] for e in r["evals"]], styles[(r["precision"], r["seed"])],
                color="C1", label=f"validation, {label}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"The book's chapter 5 run, fp32 and bf16 ({result['cpu']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "book_fp32_bf16.png"), dpi=110)


if __name__ == "__main__":
    main()
