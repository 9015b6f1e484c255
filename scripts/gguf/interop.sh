#!/usr/bin/env bash
# `ember export --gguf` read by the `gguf` Python package (PyPI, llama.cpp's own reader):
# each fixture architecture (GPT-2, Llama 3, Qwen3) in every dtype, compared tensor for
# tensor with its checkpoint (scripts/gguf/check_export.py). Makes a virtual environment
# with numpy and gguf unless PYTHON names a Python that has them.
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
status=0
for model in tiny-gpt2-a tiny-llama3 tiny-qwen3; do
    for dtype in f32 f16 bf16 q8_0 q4_0 q4_k; do
        out="$work/$model-$dtype.gguf"
        EMBER_LOG=warn "$ember" export --model "tests/fixtures/$model" --gguf "$out" --dtype "$dtype" >/dev/null
        "$python" scripts/gguf/check_export.py "tests/fixtures/$model" "$dtype" "$out" || status=1
    done
done
exit $status
