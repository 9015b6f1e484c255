#!/usr/bin/env bash
# The PyTorch parity tests (logits, losses, greedy ids, KV cache, AdamW steps) on the
# backends one by one: flex (the default CPU backend since 2026-12-06, with Ember's
# kernels; .ci/run tests it too), wgpu (through Mesa's software Vulkan driver, lavapipe, where there is no
# GPU) and tch (libtorch 2.9.0 on the CPU, set up from PyPI by
# scripts/setup-libtorch.sh). One build with all the features serves every run; flex
# also runs the kernels' own tests on flex tensors.
# Usage: scripts/test-backends.sh [flex] [wgpu] [tch]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
backends=("$@")
[ ${#backends[@]} -eq 0 ] && backends=(flex wgpu tch)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
features=()
for b in "${backends[@]}"; do
    case "$b" in
        flex)
            features+=(flex) ;;
        wgpu)
            if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 \
                && ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
                sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
                $sudo apt-get update -qq
                DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1
            fi
            features+=(wgpu) ;;
        tch)
            eval "$(scripts/setup-libtorch.sh)"
            features+=(tch) ;;
        *) echo "unknown backend $b (flex, wgpu, tch)" >&2; exit 2 ;;
    esac
done
feature_list=$(IFS=,; echo "${features[*]}")
for b in "${backends[@]}"; do
    if [ "$b" = flex ]; then
        echo "== kernel tests on flex"
        cargo test -p ember-kernels --features flex --lib --no-fail-fast
    fi
    echo "== parity tests on $b"
    EMBER_BACKEND=$b cargo test -p ember-cli --features "$feature_list" --test parity --no-fail-fast
done
