#!/usr/bin/env bash
# llama.cpp's own server under the same load test as `ember serve` (docs/serving.md's
# comparison): 1 and 8 clients, streamed chats, one JSON line each.
#
#   scripts/serve/compare_llama_cpp.sh LLAMA_SERVER MODEL.gguf [PORT]
#
# LLAMA_SERVER is llama.cpp's `llama-server`, built from its source (for instance the
# tree vendored in llama-cpp-python's sdist from PyPI: cmake -B build
# -DLLAMA_CURL=OFF && cmake --build build --target llama-server); MODEL.gguf the same
# checkpoint Ember serves, converted with that tree's convert_hf_to_gguf.py
# (--outtype bf16). The server runs 8 parallel slots (-np 8, continuous batching) of
# 1,024 positions each on every core. MAX_TOKENS (64) and REQUESTS (8 per client
# count, at least 2 per client) set the work, as in sweep.sh.
set -euo pipefail
server="${1:?usage: compare_llama_cpp.sh LLAMA_SERVER MODEL.gguf [PORT]}"
model="${2:?usage: compare_llama_cpp.sh LLAMA_SERVER MODEL.gguf [PORT]}"
port="${3:-8089}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
log="$(mktemp)"
"$server" -m "$model" --host 127.0.0.1 --port "$port" -np 8 -c 8192 -t "$(nproc)" \
    > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.5
done
for clients in 1 8; do
    requests=$(( ${REQUESTS:-8} / clients ))
    [ "$requests" -ge 2 ] || requests=2
    python3 "$root/scripts/serve/load_test.py" --base-url "http://127.0.0.1:$port" \
        --clients "$clients" --requests "$requests" --max-tokens "${MAX_TOKENS:-64}" --pid "$pid"
done
