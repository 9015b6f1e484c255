#!/usr/bin/env bash
# Builds and runs the program of README.md's "Use the crates from your project" as a
# project of its own (its ```toml and ```rust blocks, the path dependencies pointed at
# this checkout), on a GPT-2 and a Qwen3 fixture, and checks that it prints what
# `ember generate --no-stop` prints for the same prompt: README cannot drift from the
# crates' API.
# Usage: scripts/consumer/check.sh EMBER_BINARY
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
ember="${1:?usage: scripts/consumer/check.sh EMBER_BINARY}"
project="$(mktemp -d)"
trap 'rm -rf "$project"' EXIT
python3 - "$root/README.md" "$project" "$root" <<'PY'
import pathlib, re, sys
readme, project, root = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
text = open(readme, encoding="utf-8").read()
section = text.split("## Use the crates from your project", 1)[1].split("\n## ", 1)[0]
toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
rust = re.search(r"```rust\n(.*?)```", section, re.S).group(1)
toml = toml.replace('path = "../ember/', f'path = "{root}/')
(project / "src").mkdir()
(project / "Cargo.toml").write_text(
    '[package]\nname = "greedy"\nversion = "0.1.0"\nedition = "2024"\n\n' + toml
    # The same profile as the workspace, so the shared target folder's dependencies
    # are reused where their features agree.
    + '\n[profile.dev]\nopt-level = 1\ndebug = "line-tables-only"\n'
    + '\n[profile.dev.package."*"]\nopt-level = 3\ndebug = false\n'
    + '\n[workspace]\n'
)
(project / "src" / "main.rs").write_text(rust)
PY
cp "$root/Cargo.lock" "$project/Cargo.lock"
export CARGO_TARGET_DIR="$root/target"
cargo build --quiet --manifest-path "$project/Cargo.toml"
for fixture in tiny-gpt2-a tiny-qwen3; do
    model="$root/tests/fixtures/$fixture"
    got="$("$CARGO_TARGET_DIR/debug/greedy" "$model")"
    want="$("$ember" generate --model "$model" --prompt "Every effort moves you" \
        --max-new-tokens 12 --no-stop --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')"
    if [ "$got" != "$want" ]; then
        echo "consumer program on $fixture printed $(printf %q "$got"), ember generate $(printf %q "$want")" >&2
        exit 1
    fi
    echo "consumer program on $fixture: $(printf %q "$got")"
done
