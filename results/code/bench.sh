#!/bin/bash
# bench code on the report split (#15), resumable: rerun to continue (rows resume where they
# stopped; each command reports every config with rows so far, in results/code/bench/).
# K = 1 proposal per rejection round: the exact step's draws are i.i.d., so K only sets how many
# are drawn at once, and every proposal past the accepted one is wasted forward tokens (at
# K = 4 a walk without a single backtrack already costs ~4x plain); the engine batches across
# walks instead (24 at once: each live walk holds ~0.6 MB per tree node and up to 128 MiB of KV branches).
main() {
  set -e
  cd "$(dirname "$0")/../.."
  # the core comparison first (every sampler, one budget: 4x plain), then the sweep: budgets 2x
  # and 8x (half done on 2026-12-03), drift, the ends of the budget range
  bench --configs plain,greedy,bon-visible,action-rs,vgb,vgb-visible --drifts 0.5 --budgets 4 \
    --head-eval
  bench --configs vgb,vgb-visible --drifts 0.5 --budgets 2,8
  bench --configs vgb --drifts 0.25,1 --budgets 4
  bench --configs vgb --drifts 0.5 --budgets 1,16  # the ends of the issue's 1x-16x range
}
bench() {
  .venv/bin/python -m mlx_vgb.cli bench code --model qwen2.5-coder-0.5b --head results/code/head \
    --pool results/code/rollouts-report/rollouts.jsonl --out results/code/bench \
    --candidates 1 --concurrency 24 "$@"
}
main "$@"
