"""Copy a trained code head (results/code/head by default) into the package as the named
verifier ``code-head`` (mlx_vgb/assets/heads/code-head), with a card (README.md) written from
its training metrics: the command, the data sizes, held-out AUC / within-prompt AUC / Brier and
the calibration table. Run from the repository root: python results/code/ship_head.py"""

import json
import shutil
import sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "results/code/head")
work = Path(sys.argv[2] if len(sys.argv) > 2 else "results/code/rollouts-train")
dst = Path("mlx_vgb/assets/heads/code-head")
m = json.loads((work / "metrics.json").read_text())
if not (src / "verifier_config.json").is_file():
    sys.exit(
        f"{src} holds no verifier_config.json: train the head first (results/code/pipeline.sh)"
    )


def row(name, d):
    w = "n/a" if d.get("within_auc") is None else f"{d['within_auc']:.3f}"
    return (
        f"| {name} | {d['n_prefixes']} | {d['n_outcomes']} | {d['base_rate']:.3f} | "
        f"{d['auc']:.3f} | {w} | {d['brier']:.4f} |"
    )


def cal(d):
    out = ["| V^ bin | outcomes | mean V^ | observed success |", "|---|---:|---:|---:|"]
    for b in d["calibration"]:
        out.append(
            f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['weight']:.0f} | {b['mean_value']:.3f} | "
            f"{b['mean_outcome']:.3f} |"
        )
    return "\n".join(out)


dims = json.loads((src / "verifier_config.json").read_text())["head"]["dims"]
kind = "A linear probe" if len(dims) == 2 else f"An MLP ({' -> '.join(map(str, dims))})"
cv = m.get("cv")
cv_row = row(f"{cv['folds']}-fold cross-validation (train prompts)", cv) if cv else ""
card = f"""# code-head: a value head for Qwen2.5-Coder-0.5B-Instruct on Python functions

{kind} on the generator's own final normed hidden state (no second model), sigmoid output, trained by
`mlx-vgb train-verifier` on the model's own HumanEval rollouts: {m["rollouts"]} rollouts (16 per
problem of the train split, HumanEval numbers 0 or 2 mod 4; temperature 0.7, up to 384 tokens),
success rate {m["success_rate"]:.3f} (all hidden tests pass, sandboxed); value targets at every
line start ({m["prefixes"]} distinct prefixes). Use it as `--verifier code-head` with
`--model qwen2.5-coder-0.5b` and the prompt of `mlx_vgb.tasks.code` (the answer prefilled with a
python fence and the function's signature and docstring).

Command:

    {m["command"]}

Metrics at line starts (held out: a seeded 20% of the train split's problems, never trained on;
within-prompt AUC ranks prefixes of one problem against each other -- what a walk compares):

| split | prefixes | outcomes | base rate | AUC | within-prompt AUC | Brier |
|---|---:|---:|---:|---:|---:|---:|
{row("train", m["train"])}
{cv_row}
{row("held out", m["held_out"])}

Settings (linear, 3 epochs, lr 3e-4, inputs standardized) were chosen by 5-fold
cross-validation by problem on the train split alone, over linear and MLP heads and over the
hidden states of layers 6, 12, 18 and the final one (mean of 3 fold seeds, all 82 train
problems: final layer, linear: AUC 0.642, within-prompt AUC 0.542, Brier 0.2375 against 0.246 for
the base rate; the best, layer 18, 0.662 / 0.547 -- not worth a second read path). That
selection saw the 16 held-out problems too, so the held-out row is not untouched; the report
split (numbers 1 mod 4) is, and bench code --head-eval measures the head there. The signal
is weak: the head tells easier problems from harder ones better than it ranks partial programs
of one problem, and within a problem it is little better than chance.

Held-out calibration:

{cal(m["held_out"])}

The report split's metrics (HumanEval numbers 1 mod 4) are in results/code/bench/.
"""
if dst.exists():
    shutil.rmtree(dst)
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(src, tmp)
(tmp / "README.md").write_text(card)
tmp.replace(dst)
print(f"shipped {src} -> {dst}")
