#!/bin/bash
# The whole #15 run on this CPU, resumable step by step (rerun to continue; a step whose output
# exists is skipped, and the rollouts and the bench rows resume where they stopped):
#   1. the train split's rollouts (rollouts.sh train), then the value head on the generator's
#      hidden states, value targets at line starts (its held-out AUC comes early)
#   2. the report split's rollouts (rollouts.sh report): plain sampling's pool
#   3. bench code on the report split (bench.sh): every config, the head's AUC / calibration
# (A head on a separate frozen copy of the model is not a step: its features equal the
# generator's, so it would be the same head; a separate verifier needs fine-tuning.)
# Under mlx.launch (-n R --backend ring) steps 1 and 3 shard across the ranks.
# (The body is one function: bash reads it whole before running, so editing this file while it
# runs cannot change what the running copy does.)
# `nice` orders processes only inside one session: Linux's autogroup scheduler shares the CPU
# equally between sessions (each `setsid` job is one) whatever their nice values (measured
# 2026-12-07: three setsid jobs at nice 10 / 15 / 19 got equal shares). So a script that leads
# its session also sets the session's nice (/proc/self/autogroup).
autogroup_nice() {
  if [ -w /proc/self/autogroup ] && [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ]; then
    echo "$1" > /proc/self/autogroup || true
  fi
}
main() {
  set -e
  autogroup_nice 0  # first: the longest run
  cd "$(dirname "$0")/../.."
  results/code/rollouts.sh train
  train results/code/head
  results/code/rollouts.sh report
  results/code/bench.sh
}
train() {  # $1: out folder, then extra flags
  local out=$1; shift
  [ -f "$out/verifier_config.json" ] && return 0
  .venv/bin/python -m mlx_vgb.cli train-verifier --model qwen2.5-coder-0.5b \
    --prompts results/code/prompts-train.jsonl --reward humaneval --out "$out" \
    --work-dir results/code/rollouts-train --num-rollouts 16 --temp 0.7 --max-tokens 384 \
    --batch-size 64 --seed 0 --block lines --holdout 0.2 --hidden-dims "" --epochs 3 --lr 3e-4 \
    --cv 5 --no-progress --force "$@"
}
main "$@"
