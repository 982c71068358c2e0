#!/bin/bash
# Monte Carlo rollouts of Qwen2.5-Coder-0.5B-Instruct on HumanEval (#15): 16 per problem (4 problems
# per batch of 64 rows),
# temperature 0.7, up to 384 tokens, ending at the closing fence or EOS, reward = hidden tests
# pass (sandboxed). Resumable: rerun to continue. The train split trains the value head; the
# report split's rollouts are plain sampling's responses (pass@1, pass@k, the Best-of-N pool)
# and the head's AUC/calibration set.
set -e
cd "$(dirname "$0")/../.."
for split in ${@:-train report}; do  # the splits named as arguments, or both
  .venv/bin/python -m mlx_vgb.cli train-verifier --model qwen2.5-coder-0.5b \
    --prompts results/code/prompts-$split.jsonl --reward humaneval \
    --out results/code/unused-$split --work-dir results/code/rollouts-$split \
    --num-rollouts 16 --temp 0.7 --max-tokens 384 --batch-size 64 --seed 0 \
    --rollouts-only --no-progress
done
