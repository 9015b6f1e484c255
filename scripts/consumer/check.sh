#!/usr/bin/env bash
# Builds and runs examples/consumer, the programs another project would write with
# Ember's crates (path dependencies, its own Cargo project), against the `ember` binary:
# - `greedy`, README.md's "Use the crates from your project" program: README's ```rust
#   block must be src/bin/greedy.rs and its ```toml lines must be in the project's
#   Cargo.toml (so README cannot drift from the crates' API); on a GPT-2 and a Qwen3
#   fixture it must print what `ember generate --no-stop` prints for the same prompt;
# - `serve-my-model`, which embeds ember-serve: it serves the Qwen3 fixture, a chat
#   completion through its HTTP API must equal `ember chat --message` for the same
#   message, and SIGTERM must stop it cleanly.
# Both build as one project, so the dependencies compile once.
# Usage: scripts/consumer/check.sh EMBER_BINARY
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
ember="${1:?usage: scripts/consumer/check.sh EMBER_BINARY}"
consumer="$root/examples/consumer"
scratch="$(mktemp -d)"
server_pid=""
trap 'rm -rf "$scratch"; [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true' EXIT

python3 - "$root/README.md" "$consumer" <<'PY'
import pathlib, re, sys
readme, consumer = sys.argv[1], pathlib.Path(sys.argv[2])
text = open(readme, encoding="utf-8").read()
section = text.split("## Use the crates from your project", 1)[1].split("\n## ", 1)[0]
toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
rust = re.search(r"```rust\n(.*?)```", section, re.S).group(1)
program = (consumer / "src/bin/greedy.rs").read_text()
if rust != program:
    sys.exit("README.md's program differs from examples/consumer/src/bin/greedy.rs")
manifest = (consumer / "Cargo.toml").read_text()
for line in toml.splitlines():
    line = line.replace('path = "../ember/', 'path = "../../')
    if line.strip() and line not in manifest:
        sys.exit(f"README.md's dependency line {line!r} is not in examples/consumer/Cargo.toml")
PY

# The workspace's versions, so that the shared target folder's builds are reused.
cp "$root/Cargo.lock" "$consumer/Cargo.lock"
export CARGO_TARGET_DIR="$root/target"
cargo build --quiet --manifest-path "$consumer/Cargo.toml"
bin="$CARGO_TARGET_DIR/debug"

for fixture in tiny-gpt2-a tiny-qwen3; do
    model="$root/tests/fixtures/$fixture"
    got="$("$bin/greedy" "$model")"
    want="$("$ember" generate --model "$model" --prompt "Every effort moves you" \
        --max-new-tokens 12 --no-stop --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')"
    if [ "$got" != "$want" ]; then
        echo "greedy on $fixture printed $(printf %q "$got"), ember generate $(printf %q "$want")" >&2
        exit 1
    fi
    echo "greedy on $fixture: $(printf %q "$got")"
done

model="$root/tests/fixtures/tiny-qwen3"
log="$scratch/serve.log"
"$bin/serve-my-model" "$model" 127.0.0.1:0 >"$log" 2>&1 &
server_pid=$!
address=""
for _ in $(seq 1 300); do
    address="$(sed -n 's/^listening on //p' "$log")"
    [ -n "$address" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$log" >&2
        echo "serve-my-model exited before listening" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$address" ]; then
    cat "$log" >&2
    echo "serve-my-model did not start listening in 30 s" >&2
    exit 1
fi
got="$(python3 - "$address" <<'PY'
import json, sys, urllib.request
body = {"model": "my-model", "messages": [{"role": "user", "content": "Every effort moves you"}],
        "max_tokens": 12, "temperature": 0}
request = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["message"]["content"])
PY
)"
want="$("$ember" chat --model "$model" --message "Every effort moves you" --max-new-tokens 12 \
    --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')"
if [ "$got" != "$want" ]; then
    echo "serve-my-model answered $(printf %q "$got"), ember chat $(printf %q "$want")" >&2
    exit 1
fi
kill -TERM "$server_pid"
if ! wait "$server_pid"; then
    cat "$log" >&2
    echo "serve-my-model did not stop cleanly on SIGTERM" >&2
    exit 1
fi
server_pid=""
echo "serve-my-model on tiny-qwen3: $(printf %q "$got")"
