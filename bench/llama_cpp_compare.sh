#!/usr/bin/env bash
# Ember beside llama.cpp on the CPU, weight format by weight format (docs/benchmarks.md,
# "Quantized weights beside llama.cpp"):
#
#   bench/llama_cpp_compare.sh LLAMA_CPP_DIR HF_MODEL_DIR [ROUNDS]
#
# LLAMA_CPP_DIR is a llama.cpp source tree with llama-bench and llama-quantize built in
# build/bin (for instance the tree vendored in llama-cpp-python's sdist from PyPI:
# cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON && cmake --build build --target
# llama-bench llama-quantize); its convert_hf_to_gguf.py needs the `gguf`, `torch`,
# `transformers` and `sentencepiece` packages of $PYTHON (default python3). HF_MODEL_DIR is
# a Hub-layout checkpoint, for instance the Qwen3-0.6B shape that
# scripts/reference/make_bench_checkpoint.py writes. The checkpoint is converted to a
# BF16 GGUF and quantized to Q8_0, Q4_0 and Q4_K with --pure (every matrix in the format, as
# Ember's --dtype does; llama.cpp's default keeps the output matrix in Q6_K). Then, for
# each format, llama-bench and `ember bench` run one after the other ROUNDS times (2):
# a 16-token prompt and 64 new tokens on every core, one JSON line each (llama-bench's
# pp16 and tg64 rows; Ember's prompt_tokens_per_s and decode_tokens_per_s).
set -euo pipefail
llama="${1:?usage: llama_cpp_compare.sh LLAMA_CPP_DIR HF_MODEL_DIR [ROUNDS]}"
model="${2:?usage: llama_cpp_compare.sh LLAMA_CPP_DIR HF_MODEL_DIR [ROUNDS]}"
rounds="${3:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
ember="${EMBER:-$root/target/release/ember}"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
threads="$(nproc)"

"$python" "$llama/convert_hf_to_gguf.py" "$model" --outtype bf16 --outfile "$work/bf16.gguf" \
    > "$work/convert.log" 2>&1 || { cat "$work/convert.log" >&2; exit 1; }
for format in Q8_0 Q4_0 Q4_K; do
    "$llama/build/bin/llama-quantize" --pure "$work/bf16.gguf" "$work/$format.gguf" "$format" \
        > "$work/quantize.log" 2>&1 || { cat "$work/quantize.log" >&2; exit 1; }
done
for round in $(seq "$rounds"); do
    for format in bf16 Q8_0 Q4_0 Q4_K; do
        dtype="$(echo "$format" | tr '[:upper:]' '[:lower:]')"
        "$llama/build/bin/llama-bench" -m "$work/$format.gguf" -p 16 -n 64 -t "$threads" -r 3 \
            -o jsonl 2> /dev/null \
            | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    test = "pp%d" % r["n_prompt"] if r["n_prompt"] else "tg%d" % r["n_gen"]
    print(json.dumps({"engine": "llama.cpp", "round": int(sys.argv[1]), "dtype": sys.argv[2],
                      "test": test, "tokens_per_s": r["avg_ts"], "cpu": r.get("cpu_info")}))
' "$round" "$dtype"
        "$ember" bench --mode generate --model-config "$model/config.json" --dtype "$dtype" \
            --prompt-len 16 --new-tokens 64 --reps 3 2> /dev/null \
            | python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
k = r["kv_cache"]
print(json.dumps({"engine": "ember", "round": int(sys.argv[1]), "dtype": r["dtype"],
                  "pp16": k["prompt_tokens_per_s"], "tg63": k["decode_tokens_per_s"],
                  "peak_rss_mb": r["peak_rss_mb"]}))
' "$round"
    done
done
