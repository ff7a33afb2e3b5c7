#!/bin/bash
# tiny-pkn training settings side by side on a many-core machine (8 runs of OMP_NUM_THREADS=2 each).
# Writes OUT/NAME.safetensors and OUT/NAME.log (OUT: default train/out/sweep); FASHION_MNIST is the
# data directory (default /usr/share/datasets/fashion-mnist, else train/data). Each run stops after
# SWEEP_TIMEOUT seconds (default 520); TRAIN_PYTHON is the Python with torch (default python3).
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=2
OUT=${OUT:-train/out/sweep}
data=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
[ -d "$data" ] || data=train/data
mkdir -p "$OUT"
run() { name=$1; shift; timeout "${SWEEP_TIMEOUT:-520}" "${TRAIN_PYTHON:-python3}" -m train.train tiny-pkn --data "$data" --out "$OUT/$name.safetensors" "$@" > "$OUT/$name.log" 2>&1 & }
run e25 --epochs 20 --finetune 5
run e25s1 --epochs 20 --finetune 5 --seed 1
run e25s2 --epochs 20 --finetune 5 --seed 2
run a5 --epochs 20 --finetune 5 --act-bits 5
run lr1 --epochs 20 --finetune 5 --lr 1e-3
run m10 --epochs 20 --finetune 5 --margin 0.1
run w5 --epochs 20 --finetune 5 --weight-bits 5
run m40 --epochs 20 --finetune 5 --margin 0.4
wait
tail -n 2 "$OUT"/*.log
