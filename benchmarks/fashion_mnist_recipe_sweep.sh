#!/bin/bash
# The sweep behind configs/fashion_mnist.yaml: candidates trained concurrently on one GPU in fp32 (as the CPU trains),
# each for the epochs that 30 minutes of 2 CPU cores allow at its measured CPU speed.
#   DATA=/path/to/fashion-mnist benchmarks/fashion_mnist_recipe_sweep.sh WAVE     (WAVE: 1, 2 or 3)
# Prints each run's held-out top-1 per epoch. Results: benchmarks/results/fashion_mnist_recipe.md.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
D=fashion-mnist:${DATA:?DATA=the folder of the four Fashion-MNIST IDX files}
OUT=${SWEEP_DIR:-runs/recipe-sweep}
SP='soft_splits: [[3, 2, 1], [3, 2, 1], [3, 1, 1]]'
m() { echo "{embed_dim: $1, depth: $2, num_heads: $3, mlp_ratio: 2.0, token_dim: $4, $SP ${5:-}}"; }
old() { echo "{embed_dim: 128, depth: 4, num_heads: 4, mlp_ratio: 2.0, token_dim: 32, $SP ${1:-}}"; }  # the old recipe's
NOAUG="--scale [1,1] --ratio [1,1] --hflip 0"
run() { name=$1; shift
  timeout 460 python3 -m t2t_vit train --config fashion_mnist --data "$D" --device cuda --amp false --workers 0 \
    --output "$OUT" --name "$name" --no-progress --warmup-epochs 1 "$@" > "$OUT-$name.log" 2>&1 &
}
mkdir -p "$OUT"
case ${1:?WAVE: 1, 2 or 3} in
1)  # the old recipe's model (lr 1e-3) at 5-8 epochs: recipe knobs and other stems
  o() { run "$1" --model-kwargs "$(old)" --lr 1e-3 --epochs "${@:2}"; }  # NAME EPOCHS [overrides]
  o base5 5; o base5_s1 5 --seed 1; o base5_s2 5 --seed 2; o base6 6
  o lr2_5 5 --lr 2e-3; o lr3_5 5 --lr 3e-3; o bs64_5 5 --batch-size 64; o nosmooth5 5 --smoothing 0
  o pad5 5 --train-crop pad --crop-padding 2; o lr2_pad5 5 --lr 2e-3 --train-crop pad --crop-padding 2
  o lr2_pad5_s1 5 --lr 2e-3 --train-crop pad --crop-padding 2 --seed 1
  o nocrop5 5 --scale '[1, 1]' --ratio '[1, 1]'; o noaug5 5 $NOAUG
  run tf5 --lr 1e-3 --epochs 5 --model-kwargs "$(old ', t2t_mixer: transformer')"
  run tok16_6 --lr 1e-3 --epochs 6 --model-kwargs "{embed_dim: 128, depth: 4, num_heads: 4, mlp_ratio: 2.0, token_dim: 16, $SP}"
  run patch4_8 --lr 1e-3 --epochs 8 --model-kwargs "{embed_dim: 128, depth: 4, num_heads: 4, mlp_ratio: 2.0, token_dim: 32, tokens: patch, patch_size: 4}"
  run conv7 --lr 1e-3 --epochs 7 --model-kwargs "$(old ', tokens: convolution')"
  run w192_4 --lr 1e-3 --epochs 4 --model-kwargs "$(m 192 4 4 32)" ;;
2)  # narrower and shallower models for more epochs
  run small9 --lr 1e-3 --epochs 9 --model-kwargs "$(old)"; run small9_noaug --lr 1e-3 --epochs 9 $NOAUG --model-kwargs "$(old)"
  run small15 --lr 1e-3 --epochs 15 --model-kwargs "$(old)"
  run e64t16_18 --lr 1e-3 --epochs 18 --model-kwargs "$(m 64 4 2 16)"
  run e64t16_18_noaug --lr 1e-3 --epochs 18 $NOAUG --model-kwargs "$(m 64 4 2 16)"
  run e64t16_18_lr2 --lr 2e-3 --epochs 18 --model-kwargs "$(m 64 4 2 16)"
  run conv64_24 --lr 1e-3 --epochs 24 --model-kwargs "$(m 64 4 2 32 ', tokens: convolution')"
  run e64_15 --lr 1e-3 --epochs 15 --model-kwargs "$(m 64 4 2 32)"
  run e128d2_13 --lr 1e-3 --epochs 13 --model-kwargs "$(m 128 2 4 32)"
  run e64d6_13 --lr 1e-3 --epochs 13 --model-kwargs "$(m 64 6 2 32)"
  run e96_12 --lr 1e-3 --epochs 12 --model-kwargs "$(m 96 4 3 32)" ;;
3)  # the 64-wide model with token width 16 at higher lr (cut at 190 s when it ran: partial curves)
  run e64t16_lr2_21 --lr 2e-3 --epochs 21 --model-kwargs "$(m 64 4 2 16)"
  run e64t16_lr2_21_s1 --lr 2e-3 --epochs 21 --seed 1 --model-kwargs "$(m 64 4 2 16)"
  run e64t16_lr3_21 --lr 3e-3 --epochs 21 --model-kwargs "$(m 64 4 2 16)"
  run e64t16_lr2_24 --lr 2e-3 --epochs 24 --model-kwargs "$(m 64 4 2 16)"
  run e96t16_lr2_15 --lr 2e-3 --epochs 15 --model-kwargs "$(m 96 4 3 16)" ;;
esac
wait
python3 - "$OUT" <<'PY'
import csv, glob, sys
for f in sorted(glob.glob(f"{sys.argv[1]}/*/metrics.csv")):
    rows = list(csv.DictReader(open(f)))
    print(f.split("/")[-2], " ".join(f"{float(r['val_top1']):.2f}" for r in rows))
PY
