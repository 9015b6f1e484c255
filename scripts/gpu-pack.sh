#!/usr/bin/env bash
# Builds, on a CPU machine, what scripts/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain and no network: the `ember` binary and the parity test, in release, with
# the GPU backends (wgpu with Burn's fusion and autotuning; the CPU backends stay in, so
# the same pack rehearses on the CPU), stripped and compressed into target/gpu-pack (about
# 25 MB; the device tool carries at most 64 MiB). Then, with a GPU machine lent:
#   run  command: scripts/gpu-check.sh $OUT/gpu-check    carry: ["target/gpu-pack"]
# and without one, the rehearsal: scripts/gpu-check.sh /tmp/gpu-check --cpu
# Usage: scripts/gpu-pack.sh [FEATURES]   (default: wgpu)
set -euo pipefail
cd "$(dirname "$0")/.."
features=${1:-wgpu}
pack=target/gpu-pack
cargo build --release -p ember-cli --features "$features"
parity=$(cargo test --release -p ember-cli --features "$features" --test parity --no-run \
    --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "parity" and m.get("executable"):
        print(m["executable"])')
rm -rf "$pack"
mkdir -p "$pack"
for pair in "ember:target/release/ember" "parity:$parity"; do
    name=${pair%%:*}
    strip -o "$pack/$name" "${pair#*:}"
    xz -6 -T2 "$pack/$name"
done
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%FT%TZ) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "features: default + $features"
} >"$pack/manifest.txt"
cat "$pack/manifest.txt"
du -sh "$pack"/*
