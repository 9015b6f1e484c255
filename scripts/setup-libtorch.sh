#!/usr/bin/env bash
# Sets up libtorch 2.9.0 (what burn-tch 0.22.1 -> tch 0.22.0 needs) from PyPI, without
# the 4 GB of CUDA libraries a full `pip install torch==2.9.0` brings:
#   - a virtual environment with torch 2.9.0 installed --no-deps, plus the two small
#     CUDA runtime wheels its CPU library links against;
#   - a LIBTORCH folder whose include/ and lib/ point into that torch, with an empty
#     stub libtorch.so so the CUDA half of torch is never loaded.
# Prints the two variables to export; `eval "$(scripts/setup-libtorch.sh)"` sets them:
#   LIBTORCH         for building with `--features tch`
#   LD_LIBRARY_PATH  for running what was built
# Usage: scripts/setup-libtorch.sh [DIR]   (default: target/libtorch)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/target/libtorch}"
python="${PYTHON:-python3}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
venv="$dir/venv"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >&2
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -f "$site/torch/lib/libtorch_cpu.so" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        torch==2.9.0 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90 >&2
fi
lib="$site/torch/lib"
shim="$dir/libtorch"
mkdir -p "$shim/lib"
ln -sfn "$site/torch/include" "$shim/include"
for so in libtorch_cpu.so libc10.so libgomp.so.1 libshm.so; do
    if [ -e "$lib/$so" ]; then
        ln -sf "$lib/$so" "$shim/lib/$so"
    fi
done
if [ ! -f "$shim/lib/libtorch.so" ] || [ -L "$shim/lib/libtorch.so" ]; then
    rm -f "$shim/lib/libtorch.so"
    echo "" > "$dir/empty.c"
    cc -shared -fPIC -o "$shim/lib/libtorch.so" "$dir/empty.c"
fi
echo 2.9.0 > "$shim/build-version"
cuda_libs="$site/nvidia/cuda_runtime/lib:$site/nvidia/cuda_cupti/lib"
echo "export LIBTORCH=$shim"
echo "export LD_LIBRARY_PATH=$lib:$cuda_libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
