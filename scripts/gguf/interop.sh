#!/usr/bin/env bash
# GGUF both ways with the `gguf` Python package (PyPI, llama.cpp's own reader and writer),
# each fixture architecture (GPT-2, Llama 3, Qwen3) in every dtype:
# - `ember export --gguf` read by it and compared tensor for tensor with the checkpoint
#   (scripts/gguf/check_export.py);
# - the file written again by its GGUFWriter (scripts/gguf/rewrite.py) and run by Ember:
#   the same loss as the file Ember wrote, and in f32 as the checkpoint itself.
# Makes a virtual environment with numpy and gguf unless PYTHON names a Python that has
# them.
# Usage: scripts/gguf/interop.sh [EMBER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
ember="${1:-target/release/ember}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-}"
if [ -z "$python" ]; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q numpy gguf
    python="$work/venv/bin/python"
fi
export EMBER_LOG=warn
text="$work/text.txt"
head -c 400 datasets/the-verdict.txt > "$text"
loss() { "$ember" perplexity --model "$1" --text-file "$text" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["loss"])'; }
status=0
for model in tiny-gpt2-a tiny-llama3 tiny-qwen3; do
    for dtype in f32 f16 bf16 q8_0 q4_0 q4_k; do
        out="$work/$model-$dtype.gguf"
        "$ember" export --model "tests/fixtures/$model" --gguf "$out" --dtype "$dtype" >/dev/null
        "$python" scripts/gguf/check_export.py "tests/fixtures/$model" "$dtype" "$out" || status=1
        "$python" scripts/gguf/rewrite.py "$out" "$work/rewritten.gguf" >/dev/null
        ours=$(loss "$out")
        theirs=$(loss "$work/rewritten.gguf")
        want="$ours"
        [ "$dtype" = f32 ] && want=$(loss "tests/fixtures/$model")
        if [ "$ours" = "$theirs" ] && [ "$ours" = "$want" ]; then
            echo "  Ember runs it and gguf's rewrite of it: loss $ours (equal)"
        else
            echo "  DIFFERENT losses: Ember's file $ours, gguf's rewrite $theirs, expected $want"
            status=1
        fi
    done
done
exit $status
