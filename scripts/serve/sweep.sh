#!/usr/bin/env bash
# The load test at 1, 2, 4, 8 and 16 clients against one `ember serve` started here on
# 127.0.0.1 (docs/serving.md's table): one JSON line per client count, from
# scripts/serve/load_test.py (throughput, latency, time to first token, inter-token
# latency, the server's memory).
# Usage: scripts/serve/sweep.sh EMBER MODEL [SERVE FLAGS...]   e.g. --dtype bf16 --max-batch 16
# MAX_TOKENS (16) and REQUESTS (total per client count, at least 2 per client: 16)
# set the work.
set -euo pipefail
ember="${1:?usage: sweep.sh EMBER MODEL [SERVE FLAGS...]}"
model="${2:?usage: sweep.sh EMBER MODEL [SERVE FLAGS...]}"
shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
log="$(mktemp)"
EMBER_LOG=info "$ember" serve --model "$model" --port 0 "$@" 2> "$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 600); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //') || true
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.5
done
[ -n "$url" ] || { echo "the server did not start" >&2; cat "$log" >&2; exit 1; }
for clients in 1 2 4 8 16; do
    requests=$(( ${REQUESTS:-16} / clients ))
    [ "$requests" -ge 2 ] || requests=2
    python3 "$root/scripts/serve/load_test.py" --base-url "$url" --clients "$clients" \
        --requests "$requests" --max-tokens "${MAX_TOKENS:-16}" --pid "$server"
done
