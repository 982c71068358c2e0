#!/bin/bash
# Issue #16 part 1 (and part 3's rerun of it): the Fig. 1 grid, stage A (the shipped 2 x 64 LM
# and head) and stage B (the 4 x 256 LM, results/dyck_stageb/), resumable: rerun to continue.
# The fixed protocol first for both stages (the first 32 samples of every sequence: its verdict
# on all 48 prompts at a fraction of the compute), then the whole sequences (the budget
# protocol, 512 / 2048 / 8192 in three counts). Everything runs at nice 19.
# `nice` orders processes only inside one session: Linux's autogroup scheduler shares the CPU
# equally between sessions (each `setsid` job is one) whatever their nice values (measured
# 2026-12-07: three setsid jobs at nice 10 / 15 / 19 got equal shares). So a script that leads
# its session also sets the session's nice (/proc/self/autogroup).
autogroup_nice() {
  if [ -w /proc/self/autogroup ] && [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ]; then
    echo "$1" > /proc/self/autogroup || true
  fi
}
set -e
autogroup_nice 8
cd "$(dirname "$0")/../.."
RUN="nice -n 19 .venv/bin/python -m mlx_vgb.cli bench dyck_fig1"
B="--lm results/dyck_stageb/lm --verifier results/dyck_stageb/verifier --out results/dyck_fig1_stageb"
$RUN --out results/dyck_fig1 --fixed-only
$RUN $B --fixed-only
$RUN --out results/dyck_fig1
$RUN $B
