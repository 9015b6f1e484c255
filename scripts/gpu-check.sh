#!/usr/bin/env bash
# One prepared run on a freshly started GPU machine, from binaries built on a CPU machine
# (scripts/gpu-pack.sh puts them, stripped and compressed, in target/gpu-pack). In under
# 9 minutes it runs, printing as it goes and writing everything to OUT:
#   - the PyTorch parity suite (tests/parity.rs) on each GPU backend in the pack;
#   - the gpt2-small training step (book setting, fp32 and bf16) and KV-cached greedy
#     generation, Ember beside PyTorch CUDA (bench/torch_gpt_bench.py);
#   - generation of a model of Qwen3-0.6B's shape, Ember beside transformers on CUDA
#     (bench/hf_generate_bench.py);
#   - on a GPU, CubeCL's profile of two training steps (OUT/cubecl-profile.log.xz);
#   - OUT/summary.md: the table with Ember / PyTorch ratios; OUT/bench.jsonl the raw lines,
#     OUT/env.txt the machine, OUT/*.log each step's whole output.
# Every step has its own time limit and a failing step does not stop the others.
#
# Usage: scripts/gpu-check.sh OUT [--cpu]
#   --cpu  the rehearsal on a machine without a GPU: the same steps on the CPU backends
#          (parity on ndarray and flex, PyTorch on the CPU), with shorter generations.
# Environment: PYTHON (python3), GPU_BACKENDS (wgpu: the GPU backends to test; the
# binaries must have them), EMBER_GPU_PACK (target/gpu-pack), GPU_CHECK_BUDGET_S (510 s
# for all the steps on a GPU, 1800 with --cpu: a step gets at most what is left).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${1:?usage: scripts/gpu-check.sh OUT [--cpu]}
mode=gpu
[ "${2:-}" = --cpu ] && mode=cpu
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-python3}
pack=${EMBER_GPU_PACK:-target/gpu-pack}
started=$(date +%s)
# 8.5 minutes for the steps (GPU mode): the machine's 15 minutes include its start.
budget=${GPU_CHECK_BUDGET_S:-510}
deadline=$((started + budget))
: >"$out/bench.jsonl"
: >"$out/steps.txt"

say() { echo "[gpu-check +$(($(date +%s) - started))s] $*" | tee -a "$out/steps.txt"; }

# The binaries: unpacked next to the pack (xz is everywhere; the pack stays under 64 MiB).
bin=$out/bin
mkdir -p "$bin"
for name in ember parity; do
    if [ -f "$pack/$name.xz" ]; then
        xz -dc "$pack/$name.xz" >"$bin/$name" && chmod +x "$bin/$name"
    elif [ -x "$pack/$name" ]; then
        cp "$pack/$name" "$bin/$name"
    else
        say "missing $pack/$name(.xz): build the pack with scripts/gpu-pack.sh first"
        exit 2
    fi
done
cp "$pack/manifest.txt" "$out/pack-manifest.txt" 2>/dev/null || true
ember=$bin/ember

# step NAME SECONDS COMMAND...: runs COMMAND with a limit, output to OUT/NAME.log; JSON
# lines it prints go to bench.jsonl tagged with the step's name.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s) rc
    # The whole run stays under its budget: a step gets what is left, at most.
    local left=$((deadline - t0))
    if [ $left -lt 10 ]; then
        say "$name: SKIPPED (the ${budget}s budget is spent)"
        return 0
    fi
    [ $limit -gt $left ] && limit=$left
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        say "$name: ok (${took}s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "$name: TIMED OUT after ${limit}s"
    else
        say "$name: FAILED (exit $rc, ${took}s): $(grep -v '^\s*$' "$out/$name.log" | tail -1 | cut -c1-200)"
    fi
    grep '^{' "$out/$name.log" | while IFS= read -r line; do
        echo "{\"step\": \"$name\", \"record\": $line}" >>"$out/bench.jsonl"
    done
    return 0
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "mode: $mode"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | tr '\n' ' '
    echo
    $python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1
    $python -c 'import transformers; print("transformers", transformers.__version__)' 2>&1
    echo "ember: $("$ember" --version 2>&1); backends: $("$ember" backends 2>&1 | tr "\n" " ")"
} >"$out/env.txt"
cat "$out/env.txt"

if [ $mode = gpu ]; then
    backends=${GPU_BACKENDS:-wgpu}
    torch_device=cuda
    gen_tokens=64
    qwen_tokens=64
    limit_parity=120
    limit_bench=60
else
    budget=${GPU_CHECK_BUDGET_S:-1800}
    deadline=$((started + budget))
    backends=ndarray,flex
    torch_device=cpu
    gen_tokens=32
    qwen_tokens=16
    limit_parity=300
    limit_bench=240
fi

# 1. Parity with PyTorch and transformers on each backend (the fixtures are read from
#    this working tree, not from where the test was built).
for b in ${backends//,/ }; do
    step "parity-$b" $limit_parity env EMBER_BACKEND=$b EMBER_REPO_ROOT="$repo" "$bin/parity"
done

# 2. The gpt2-small training step, book setting (batch 2 x 256, dropout 0.1, AdamW).
first=${backends%%,*}
train=(--mode train --preset gpt2-small --context 256 --batch 2 --steps 5 --warmup 2)
for precision in f32 bf16; do
    torch_dtype=fp32; [ $precision = bf16 ] && torch_dtype=bf16
    step "train-$precision-ember" $limit_bench "$ember" --backend "$first" bench "${train[@]}" --precision $precision
    step "train-$precision-pytorch" $limit_bench $python bench/torch_gpt_bench.py "${train[@]}" \
        --dtype $torch_dtype --device $torch_device
done

# 3. Greedy generation with the KV cache (prompt 16), gpt2-small.
gen=(--mode generate --preset gpt2-small --prompt-len 16 --new-tokens $gen_tokens --reps 3)
step generate-ember $limit_bench "$ember" --backend "$first" bench "${gen[@]}"
step generate-pytorch $limit_bench $python bench/torch_gpt_bench.py "${gen[@]}" --device $torch_device

# 4. A model of Qwen3-0.6B's shape (random weights), f32 and bf16 weights.
for dtype in f32 bf16; do
    hf_dtype=fp32; [ $dtype = bf16 ] && hf_dtype=bf16
    step "qwen3-$dtype-ember" $limit_bench "$ember" --backend "$first" bench --mode generate \
        --model-config bench/configs/qwen3-0.6b.json --dtype $dtype --new-tokens $qwen_tokens --reps 3
    step "qwen3-$dtype-transformers" $limit_bench $python bench/hf_generate_bench.py \
        --config bench/configs/qwen3-0.6b.json --dtype $hf_dtype --new-tokens $qwen_tokens \
        --repeats 3 --device $torch_device
done

# 5. On a GPU, the profile to read: CubeCL's kernel timings (and autotune decisions)
#    over two training steps, compressed (the compilation log inside is large).
if [ $mode = gpu ]; then
    step profile-train-f32 $limit_bench env CUBECL_DEBUG_LOG="$out/cubecl-profile.log" \
        CUBECL_DEBUG_OPTION=profile-medium "$ember" --backend "$first" bench --mode train \
        --preset gpt2-small --context 256 --batch 2 --steps 2 --warmup 1
    [ -f "$out/cubecl-profile.log" ] && xz -6 -T2 "$out/cubecl-profile.log"
fi

$python scripts/gpu_check_summary.py "$out" | tee "$out/summary.md"
say "done in $(($(date +%s) - started)) s; results in $out"
