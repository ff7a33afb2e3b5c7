#!/usr/bin/env bash
# Times whole `pkn` runs on a model (default tiny-pkn): keygen, encrypt, infer (bootstraps per
# second, ms per bootstrap, per-layer seconds next to the cost model's estimate, end-to-end
# seconds, peak memory), decrypt; prints key and ciphertext sizes.
# Usage: bash benches/whole_run.sh [model]   (run from the repository root; not part of CI)
set -euo pipefail
model=${1:-tiny-pkn}
cargo build --release -q
bin=$(pwd)/target/release/pkn
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export PKN_WEIGHTS=$OLDPWD/weights
timed() { /usr/bin/time -f "%e s, peak RSS %M KiB" "$@"; }
echo "== $model on $(nproc) cores, $(date -u +%F)"
timed "$bin" keygen --model "$model"
timed "$bin" encrypt "$OLDPWD/samples/test-1-pullover.png" --model "$model"
timed "$bin" infer --model "$model"
timed "$bin" decrypt
ls -l client.key server.key input.ct output.ct | awk '{print $5, $9}'
