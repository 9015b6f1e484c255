#!/usr/bin/env bash
# The test command of README.md: every crate's tests on the default CPU backend.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --no-fail-fast
