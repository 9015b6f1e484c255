#!/usr/bin/env bash
# Data-parallel training on the CPU, side by side: Ember on MPI (`mpirun -np 2`, one
# thread per rank) against PyTorch's DistributedDataParallel on Gloo (`torchrun
# --nproc_per_node 2`, one thread per rank), on the book's gpt2-small step (context
# 256, a batch of 2 in all, dropout 0.1, fp32), beside each engine in one process with
# one thread and with every core. Rounds alternate the engines (A B A B ...); the table
# gives medians over rounds of each run's median step, and the share of a step the
# gradients' exchange takes (Ember: `exchange_s` of metrics.jsonl; PyTorch: the step
# against the same step under `no_sync()`).
#
#   bench/ddp_compare.sh EMBER_BUILT_WITH_MPI [ROUNDS] [STEPS]
#
# Needs Open MPI's mpirun, and python3 with torch (PYTHON, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ember=$(realpath "${1:?usage: bench/ddp_compare.sh EMBER_BUILT_WITH_MPI [ROUNDS] [STEPS]}")
rounds=${2:-3}
steps=${3:-8}
python=${PYTHON:-python3}
torchrun=$(dirname "$(command -v "$python")")/torchrun
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results="$work/results.jsonl"

# Ember: a pretraining run of the book preset, its steps read from metrics.jsonl (the
# first two left out: they warm up, as PyTorch's --warmup 2), as one JSON line.
ember_run() {
    local name=$1 ranks=$2 threads=$3 out="$work/run"
    rm -rf "$out"
    local launch=()
    [ "$ranks" -gt 1 ] && launch=(mpirun -np "$ranks" --bind-to none)
    RAYON_NUM_THREADS=$threads EMBER_LOG=warn "${launch[@]}" "$ember" pretrain --preset book \
        --data datasets/the-verdict.txt --out "$out" --quiet --max-steps "$steps" \
        --set train.eval_freq=1000000 --set train.checkpoint_every=0 >/dev/null
    "$python" - "$out/metrics.jsonl" "$name" >>"$results" <<'EOF'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])][2:]
steps = [512 / l["tokens_per_sec"] for l in lines]
exchange = [l["exchange_s"] for l in lines if "exchange_s" in l]
step = statistics.median(steps)
print(json.dumps(dict(engine="ember", config=sys.argv[2], step_s=step, tokens_per_s=512 / step,
                      exchange_share=statistics.median(exchange) / step if exchange else None)))
EOF
}

torch_run() {
    local name=$1 ranks=$2 threads=$3
    local args=(bench/torch_gpt_bench.py --mode train --preset gpt2-small --context 256 --batch 2
        --steps "$((steps - 2))" --warmup 2 --attn sdpa --threads "$threads")
    if [ "$ranks" -gt 1 ]; then
        OMP_NUM_THREADS=1 "$torchrun" --nproc_per_node "$ranks" "${args[@]}" --ddp 2>/dev/null
    else
        "$python" "${args[@]}"
    fi | "$python" -c '
import json, sys
r = json.loads(sys.stdin.read())
print(json.dumps(dict(engine="pytorch", config=sys.argv[1], step_s=r["step_s_median"],
                      tokens_per_s=r["tokens_per_s"], exchange_share=r.get("sync_share"))))' "$name" >>"$results"
}

cores=$(nproc)
for round in $(seq "$rounds"); do
    echo "round $round/$rounds" >&2
    for config in "2 ranks x 1 thread" "1 process x 1 thread" "1 process x $cores threads"; do
        case $config in
            "2 ranks"*) set -- 2 1 ;;
            *"x 1 thread") set -- 1 1 ;;
            *) set -- 1 "$cores" ;;
        esac
        ember_run "$config" "$@"
        torch_run "$config" "$@"
    done
done

"$python" - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
configs = list(dict.fromkeys(r["config"] for r in rows))
print("| configuration | Ember tokens/s | PyTorch tokens/s | Ember / PyTorch (spread) | exchange share Ember / PyTorch |")
print("|---|---:|---:|---:|---:|")
for c in configs:
    e = [r for r in rows if r["config"] == c and r["engine"] == "ember"]
    t = [r for r in rows if r["config"] == c and r["engine"] == "pytorch"]
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(e, t)]
    share = lambda rs: (f"{100 * statistics.median([r['exchange_share'] for r in rs]):.0f}%"
                        if rs[0]["exchange_share"] is not None else "-")
    print(f"| {c} | {statistics.median(r['tokens_per_s'] for r in e):.0f} "
          f"| {statistics.median(r['tokens_per_s'] for r in t):.0f} "
          f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
          f"| {share(e)} / {share(t)} |")
EOF
