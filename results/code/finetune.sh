#!/bin/bash
# #15's "head on a separate copy of the model", made a verifier of its own: the top 2 of 24
# layers of a copy of Qwen2.5-Coder-0.5B trained with the head on the train split's rollouts
# (the pipeline's step 1), then scored on the report split's rollouts (head-eval). Resumable:
# the layer inputs are kept per prompt, a finished step is skipped. Run one heavy job at a time
# (three 0.5B processes at once ran this 24 GiB machine out of memory).
set -e
cd "$(dirname "$0")/../.."
work=results/code/work-ft2
mkdir -p "$work"
for f in rollouts.jsonl rollouts.jsonl.meta.json; do  # the train split's rollouts, as collected
  [ -f "$work/$f" ] || cp "results/code/rollouts-train/$f" "$work/"
done
if [ ! -d results/code/head-ft2/backbone ]; then  # the copy (2 GB) is not committed
  .venv/bin/python -m mlx_vgb.cli train-verifier --model qwen2.5-coder-0.5b \
    --prompts results/code/prompts-train.jsonl --reward humaneval --out results/code/head-ft2 \
    --work-dir "$work" --num-rollouts 16 --temp 0.7 --max-tokens 384 --batch-size 64 --seed 0 \
    --block lines --holdout 0.2 --hidden-dims "" --epochs 3 --lr 3e-4 \
    --finetune-layers 2 --finetune-epochs 3 --finetune-lr 5e-5 --force
fi
[ -f results/code/head-eval/finetuned-top2/results.json ] ||
  .venv/bin/python -m mlx_vgb.cli bench code --model qwen2.5-coder-0.5b \
    --head results/code/head-ft2 --pool results/code/rollouts-report/rollouts.jsonl \
    --out results/code/head-eval/finetuned-top2 --configs plain --head-eval --report-only
