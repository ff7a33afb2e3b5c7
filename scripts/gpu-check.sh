#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (H100/H200 for the default sm_90 build, a driver for CUDA 13):
# keygen, then for each samples/test-*.png encrypt, `infer --gpu`, decrypt, and compare with
# `infer --clear`; prints the timings and "N passed, N failed". See docs/gpu.md.
#
#   scripts/gpu-check.sh [path/to/pkn]    # default target/gpu/release/pkn, libcudart.so.13 beside it
#
# PKN_MODEL picks the model (default tiny-pkn); PKN_CHECK_CPU=1 also times a CPU `infer` on the
# first image, for the speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$(realpath "${1:-target/gpu/release/pkn}")
model=${PKN_MODEL:-tiny-pkn}
export PKN_WEIGHTS=$root/weights
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Runs a command, then prints its wall time on stderr.
timed() {
    local start=$EPOCHREALTIME
    "$@"
    awk -v a="$start" -v b="$EPOCHREALTIME" -v c="$*" 'BEGIN { printf "  [%.1f s] %s\n", b - a, c }' >&2
}
# The prediction block of a command's output.
prediction() { awk '/^prediction:/ { p = 1 } p'; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== $model, $(nproc) CPU cores, $bin"
timed "$bin" keygen --model "$model" >/dev/null
passed=0
failed=0
first=1
for image in "$root"/samples/test-*.png; do
    name=$(basename "$image")
    timed "$bin" encrypt "$image" --model "$model" >/dev/null
    if [ "$first" = 1 ] && [ "${PKN_CHECK_CPU:-0}" = 1 ]; then
        timed "$bin" infer --model "$model" --output cpu.ct
    fi
    first=0
    timed "$bin" infer --gpu --model "$model"
    gpu=$(timed "$bin" decrypt | prediction)
    clear=$("$bin" infer --clear "$image" --model "$model" | prediction)
    if [ -n "$gpu" ] && [ "$gpu" = "$clear" ]; then
        echo "PASS $name: GPU result equals the clear reference"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        echo "GPU:"
        echo "$gpu"
        echo "clear:"
        echo "$clear"
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
