#!/bin/bash
# Issue #16 stage B on this CPU, resumable (rerun to continue):
#   1. a 4-layer x 256 llama on 300k Dyck strings (64 x 4,688 steps: one epoch of the
#      precursor's 300k), AdamW 3e-4, checkpoints every 200 steps in lm.ckpt/, then validity of
#      2,000 samples in distribution and 2,000 OOD completions (lm/training.json);
#   2. its value head from 2,000 OOD prompts x 8 rollouts (train-verifier; rollouts resume).
cd "$(dirname "$0")/../.." || exit 1
set -e
if [ ! -f results/dyck_stageb/lm/model.safetensors ]; then
  .venv/bin/python -m mlx_vgb.tasks.train_dyck_lm --stage lm --out results/dyck_stageb/lm \
    --layers 4 --hidden-size 256 --heads 4 --intermediate-size 1024 --optimizer adamw \
    --lr 3e-4 --warmup 100 --batch-size 64 --steps 4688 --seed 0 --checkpoint-every 200 \
    --eval-samples 2000
fi
if [ ! -f results/dyck_stageb/verifier/verifier_config.json ]; then
  .venv/bin/python -m mlx_vgb.tasks.train_dyck_lm --stage verifier --out results/dyck_stageb/lm \
    --verifier-out results/dyck_stageb/verifier --work-dir results/dyck_stageb/verifier-work \
    --verifier-prompts 2000 --verifier-rollouts 8
fi
