#!/usr/bin/env bash
# HumanEval split into N shard processes run side by side (a machine with many cores, or a GPU
# with mlx[cuda]), then one merged report. Each shard appends its rows to OUT/shard-I/rows.jsonl
# as they finish, so a shard cut by the time limit keeps its finished problems (the merge drops
# a problem unless every sampler finished it), and rerunning the same command resumes.
#
# usage: scripts/humaneval_shards.sh N OUT LIMIT_S [bench humaneval flags...]
#   e.g. scripts/humaneval_shards.sh 14 results/humaneval 400 --problems 0 --samples 1 --bon-n 16
set -uo pipefail
n=$1 out=$2 limit=$3
shift 3
py=${PYTHON:-python3}
mkdir -p "$out"
for ((i = 0; i < n; i++)); do
  timeout --signal=KILL "$limit" "$py" -m mlx_vgb.cli bench humaneval "$@" --shard "$i/$n" \
    --out "$out/shard-$i" >"$out/shard-$i.log" 2>&1 &
done
wait
"$py" -m mlx_vgb.cli bench humaneval "$@" --merge "$out"/shard-*/ --out "$out"
