#!/usr/bin/env bash
# One process with 2 threads against 2 MPI processes with 1 thread each, on this machine, in the
# same run on the same encrypted image: wall time of each `pkn infer`, their ratio, what process 0
# exchanged, and both results decrypted against `pkn infer --clear`.
# Usage: bash benches/mpi_scaling.sh [model...]   (default: tiny-pkn cnn-pkn; needs OpenMPI and
# libclang for `make mpi`; run from the repository root; not part of CI)
set -euo pipefail
models=("${@:-tiny-pkn}")
[ $# -gt 0 ] || models=(tiny-pkn cnn-pkn)
make -s mpi
bin=$(pwd)/target/mpi/release/pkn
sample=$(pwd)/samples/test-1-pullover.png
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export PKN_WEIGHTS=$OLDPWD/weights OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
seconds() { local start=$EPOCHREALTIME; "$@" >"$log" 2>&1; awk "BEGIN { print $EPOCHREALTIME - $start }"; }
for model in "${models[@]}"; do
    echo "== $model on $(nproc) cores, $(date -u +'%F %H:%M')"
    "$bin" keygen --model "$model" --force >/dev/null
    "$bin" encrypt "$sample" --model "$model" >/dev/null
    log=one.log
    one=$(RAYON_NUM_THREADS=2 seconds "$bin" infer --model "$model" -o one.ct)
    log=two.log
    two=$(seconds mpirun -n 2 --bind-to none -x PKN_WEIGHTS -x RAYON_NUM_THREADS=1 "$bin" infer --model "$model" -o two.ct)
    grep -E "bootstraps \(|exchanges:" one.log two.log
    sed -n '/^layer/,$p' two.log
    clear=$("$bin" infer --clear "$sample" --model "$model" | sed -n '/^prediction/,$p')
    for out in one.ct two.ct; do
        if [ "$("$bin" decrypt -i "$out" | sed -n '/^prediction/,$p')" = "$clear" ]; then
            echo "$out: decrypted scores equal the clear circuit's"
        else
            echo "$out: DIFFERS from the clear circuit" && exit 1
        fi
    done
    printf '1 process x 2 threads: %.1f s; 2 processes x 1 thread: %.1f s; ratio %.3f\n' \
        "$one" "$two" "$(awk "BEGIN { print $two / $one }")"
done
