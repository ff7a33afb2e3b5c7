#!/bin/bash
# Parallel sweep of tiny-pkn training settings on the device machine (16 cores).
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=2
run() { name=$1; shift; timeout 520 python3 train/train.py tiny-pkn --data train/data --out $OUT/$name.safetensors "$@" > $OUT/$name.log 2>&1 & }
run e25 --epochs 20 --finetune 5
run e25s1 --epochs 20 --finetune 5 --seed 1
run e25s2 --epochs 20 --finetune 5 --seed 2
run a5 --epochs 20 --finetune 5 --act-bits 5
run lr1 --epochs 20 --finetune 5 --lr 1e-3
run m10 --epochs 20 --finetune 5 --margin 0.1
run w5 --epochs 20 --finetune 5 --weight-bits 5
run m40 --epochs 20 --finetune 5 --margin 0.4
wait
tail -n 2 $OUT/*.log
