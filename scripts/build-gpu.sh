#!/usr/bin/env bash
# Build pkn with the `gpu` feature on a machine without a GPU or a system CUDA (see docs/gpu.md).
#
#   scripts/build-gpu.sh                    # cargo build --release --features gpu --target-dir target/gpu
#   scripts/build-gpu.sh test --release --features gpu --target-dir target/gpu --test gpu --no-run
#
# Any arguments replace the default cargo command; the environment set up here is the same.
# PKN_CUDA_ARCH (default 90: H100/H200) is the GPU architecture compiled for.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
arch=${PKN_CUDA_ARCH:-90}
venv=$root/target/cuda-venv
patched=$root/target/cuda-patched

# CMake >= 3.24 runs the CUDA backend's build.
if ! command -v cmake >/dev/null; then
    apt-get update && apt-get install -y cmake
fi

# A CUDA 13.0 toolkit from PyPI wheels, pinned to match the device driver.
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
# nvcc's profile links from lib64 and the backend links -lcudart: the wheels ship lib/ and the .so.13.
ln -sfn lib "$cuda/lib64"
ln -sfn libcudart.so.13 "$cuda/lib/libcudart.so"
export CUDA_PATH=$cuda CUDA_HOME=$cuda CUDACXX=$cuda/bin/nvcc PATH=$cuda/bin:$PATH

# Without a GPU the backends' CMake falls back to sm_70, which CUDA 13 rejects: build from copies
# of the two crates (under target/, never committed) whose fallback is $arch.
metadata=$(cargo metadata --format-version 1 --features gpu --locked)
patch_args=()
for crate in tfhe-cuda-common tfhe-cuda-backend; do
    manifest=$(python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(next(p["manifest_path"] for p in meta["packages"] if p["name"] == sys.argv[1]))' "$crate" <<<"$metadata")
    src=$(dirname "$manifest")
    dst=$patched/$(basename "$src")
    if [ ! -d "$dst" ]; then
        mkdir -p "$patched"
        # -a keeps the timestamps, so the backend's build.rs does not regenerate its bindings.
        cp -a "$src" "$dst.tmp"
        sed -i -e "s/set(CMAKE_CUDA_ARCHITECTURES 70)/set(CMAKE_CUDA_ARCHITECTURES $arch)/" \
            -e "s/set(CUDA_ARCH \"700\")/set(CUDA_ARCH \"${arch}0\")/" "$dst.tmp/cuda/CMakeLists.txt"
        grep -q "set(CMAKE_CUDA_ARCHITECTURES $arch)" "$dst.tmp/cuda/CMakeLists.txt" ||
            { echo "error: $crate's CMakeLists.txt has no sm_70 fallback to patch" >&2; exit 1; }
        mv "$dst.tmp" "$dst"
    fi
    patch_args+=(--config "patch.crates-io.$crate.path=\"$dst\"")
done

# The binary finds libcudart.so.13 beside itself.
export RUSTFLAGS="-L native=$cuda/lib -C link-arg=-Wl,-rpath,\$ORIGIN"

# The patch rewrites Cargo.lock's entries for the two crates; keep the committed one.
cp Cargo.lock "$root/target/Cargo.lock.committed"
trap 'cp "$root/target/Cargo.lock.committed" "$root/Cargo.lock"' EXIT

if [ $# -eq 0 ]; then
    set -- build --release --features gpu --target-dir target/gpu
fi
start=$SECONDS
# The patch goes after the subcommand: an external one (clippy) passes it on to cargo only there.
cargo "$1" "${patch_args[@]}" "${@:2}"
echo "cargo $* took $((SECONDS - start)) s"

# Beside the binary, and beside the test binaries in deps/.
for dir in target/gpu/release target/gpu/release/deps; do
    if [ -d "$dir" ]; then
        cp "$cuda/lib/libcudart.so.13" "$dir/"
    fi
done
if [ -x target/gpu/release/pkn ]; then
    echo "target/gpu/release/pkn, with libcudart.so.13 beside it; target/gpu is $(du -sh target/gpu | cut -f1)"
fi
