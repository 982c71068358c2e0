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
  # the core comparison first (every sampler, one budget: 4x plain), then the sweep: budgets 1x
  # to 16x (2x and 8x on 20 problems before the read-off existed), then drift
  bench --configs plain,greedy,bon-visible,action-rs,vgb,vgb-visible --drifts 0.5 --budgets 4 \
    --head-eval
  # one walk per response at 16x; the 1x, 2x and 8x rows are read off it where those budgets
  # would have stopped it (Sampler.sample_budgets: the same rows as runs of their own)
  # (8 at once, not 24: walks of up to 16x plain hold ~0.6 MB per expanded tree node; at 24 the
  # process reached 17 GB on this 24 GB machine and was OOM-killed, 2026-12-03 10:27; at 12 it
  # grew ~1 GB per 10 minutes, and the live walks are more and more the long ones, up to
  # ~3,200 tokens = ~2 GB each)
  # (since 2026-12-03 13:20: 24 at once again, with --row-memory 3: past 3 GiB of rows the
  # least recently drawn go to a temporary file and come back bit for bit -- the same rows)
  bench --configs vgb,vgb-visible --drifts 0.5 --budgets 1,2,8,16 --concurrency 24 --row-memory 3
  bench --configs vgb --drifts 0.25,1 --budgets 4
}
bench() {
  .venv/bin/python -m mlx_vgb.cli bench code --model qwen2.5-coder-0.5b --head results/code/head \
    --pool results/code/rollouts-report/rollouts.jsonl --out results/code/bench \
    --candidates 1 --concurrency 24 "$@"
}
main "$@"
