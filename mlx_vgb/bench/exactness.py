"""Exactness on random trees: TV(output law, pi*) of each sampler, before and after issue #12.

Trees: ``toy.TabularLM.random`` (vocabularies 2-4, horizons 3-6, three seeds each), with equal
depths or with early EOS (token 0, probability 0.25 at every prefix); tilt tau(y) = 1 if
sum(y) % 3 else 0.2. Values: the exact V*, or V* times a factor log-uniform in [1/3, 3] at every
internal node (``toy.RandomlyPerturbedValue``; tau exact at leaves).

TV: exact, from each sampler's transition rule (``mlx_vgb.laws.output_law``), mean and max over
the trees of a cell. Cost: measured on the seed-0 tree of the first ``--cost-trees`` shapes of
each depth group with the exact value, ``--samples`` responses per sampler and tree (the lazy walk: a fifth of them):
walk steps, forward tokens (distinct prefixes whose pi_ref was asked) and V^ evaluations per
response.

"Before" rows are the defaults before #12, expressed in today's code: the biased
``SelfNormalized(8)`` step (then ``Candidates(8)``), no padding (identical to the old drift
correction at lambda = 1), and the old lazy T = 4 D^2 + 8 D with 8 D tries.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import VGB, ActionLevelRS, Enumerate, SelfNormalized, laws, toy
from .harness import settings
from .report import Report, markdown_table

FULL = dict(samples=300, cost_trees=6)
QUICK = dict(samples=40, cost_trees=1)
SHAPES = [(2, 4), (3, 4), (4, 3), (4, 4), (2, 6), (3, 5)]


def add_args(p) -> None:
    p.add_argument("--samples", type=int, default=None, help="responses per sampler for costs")
    p.add_argument(
        "--cost-trees",
        type=int,
        default=None,
        help="shapes (seed-0 tree each) per depth group on which costs are measured",
    )


def tilt(y: tuple[int, ...]) -> float:
    return 1.0 if sum(y) % 3 else 0.2


def old_steps_per_try(depth: int) -> int:
    return 4 * depth * depth + 8 * depth


def samplers(H: int) -> list[tuple[str, str, object]]:
    """(label, before/after, sampler) at horizon H."""
    sn = SelfNormalized(8)
    return [
        ("vgb, SelfNormalized(8), no padding", "before", VGB(horizon=H, choice=sn, pad=False)),
        (
            "vgb-lazy, SelfNormalized(8), no padding, T = 4D^2 + 8D",
            "before",
            VGB(
                horizon=H,
                choice=sn,
                pad=False,
                lazy=True,
                steps_per_try=old_steps_per_try(H),
                max_tries=8 * H,
            ),
        ),
        ("action-rs, SelfNormalized(8)", "before", ActionLevelRS(horizon=H, choice=sn)),
        ("vgb (default: Rejection(8), padded)", "after", VGB(horizon=H)),
        ("vgb, Enumerate, padded", "after", VGB(horizon=H, choice=Enumerate())),
        ("vgb, SelfNormalized(8), padded", "after", VGB(horizon=H, choice=sn)),
        ("vgb-lazy (default T, tries)", "after", VGB(horizon=H, lazy=True)),
        ("action-rs (default: Rejection(8))", "after", ActionLevelRS(horizon=H)),
    ]


@dataclass
class Row:
    sampler: str
    when: str
    depths: str  # "equal" or "early EOS"
    value: str  # "exact" or "perturbed"
    vocab: int
    horizon: int
    seed: int
    tv: float
    steps: float = math.nan
    forward_tokens: float = math.nan
    verifier_evals: float = math.nan
    proposals: float = math.nan
    unfinished: float = math.nan


def run(args) -> None:
    cfg = settings(args, FULL, QUICK, ("samples", "cost_trees"))
    cfg.update(
        shapes=SHAPES,
        seeds=[0, 1, 2],
        eos_prob=0.25,
        perturbation="[1/3, 3]",
        tilt="1 if sum(y) % 3 else 0.2",
    )
    rows: list[Row] = []
    t0 = time.perf_counter()
    for eos in (False, True):
        depths = "early EOS" if eos else "equal"
        for shape_i, (vocab, H) in enumerate(SHAPES):
            for seed in (0, 1, 2):
                lm = toy.TabularLM.random(
                    vocab,
                    seed=seed + 10 * args.seed,
                    eos_token_id=0 if eos else None,
                    eos_prob=0.25 if eos else 0.0,
                )
                pi_star = toy.target(lm, tilt, H)
                costed = seed == 0 and shape_i < cfg["cost_trees"]
                for value in ("exact", "perturbed"):
                    v = (
                        toy.ExactValue(lm, tilt, H)
                        if value == "exact"
                        else toy.RandomlyPerturbedValue(lm, tilt, H, factor=3.0, seed=seed)
                    )
                    tree = laws.WalkTree(lm, v, H)
                    for label, when, smp in samplers(H):
                        row = Row(
                            label,
                            when,
                            depths,
                            value,
                            vocab,
                            H,
                            seed,
                            toy.tv(laws.output_law(tree, smp), pi_star),
                        )
                        if costed and value == "exact":
                            n = cfg["samples"] // (5 if getattr(smp, "lazy", False) else 1)
                            res = [smp.sample(lm, v, seed=i) for i in range(max(1, n))]
                            row.steps = float(np.mean([r.stats.steps for r in res]))
                            row.forward_tokens = float(
                                np.mean([r.stats.forward_tokens for r in res])
                            )
                            row.verifier_evals = float(
                                np.mean([r.stats.verifier_evals for r in res])
                            )
                            row.proposals = float(np.mean([r.stats.proposals for r in res]))
                            row.unfinished = float(np.mean([not r.reached_leaf for r in res]))
                        rows.append(row)
        print(f"[exactness] {depths} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    write(args, cfg, rows)


def write(args, cfg, rows: list[Row]) -> None:
    rep = Report(task="exactness", command=args.command, config=cfg)
    rep.rows = [asdict(r) for r in rows]
    labels = list(dict.fromkeys((r.sampler, r.when) for r in rows))
    cells = [(d, v) for d in ("equal", "early EOS") for v in ("exact", "perturbed")]
    table, summary = [], {}
    for label, when in labels:
        row = {"sampler": label, "": when}
        for d, v in cells:
            tvs = [r.tv for r in rows if r.sampler == label and r.depths == d and r.value == v]
            row[f"{d}, {v} V^"] = f"{np.mean(tvs):.3f} ({np.max(tvs):.3f})"
            summary[f"{label} | {d} | {v}"] = {
                "mean_tv": float(np.mean(tvs)),
                "max_tv": float(np.max(tvs)),
            }
        table.append(row)
    cost = []
    for label, when in labels:
        for d in ("equal", "early EOS"):
            rs = [
                r for r in rows if r.sampler == label and r.depths == d and not math.isnan(r.steps)
            ]
            if not rs:
                continue
            cost.append(
                {
                    "sampler": label,
                    "": when,
                    "depths": d,
                    "steps": np.mean([r.steps for r in rs]),
                    "forward tokens": np.mean([r.forward_tokens for r in rs]),
                    "V^ evals": np.mean([r.verifier_evals for r in rs]),
                    "proposals": np.mean([r.proposals for r in rs]),
                    "unfinished": np.mean([r.unfinished for r in rs]),
                }
            )
    rep.summary = {"tv": summary}
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    rep.add_section(
        "TV(output law, pi*): mean (max) over the trees of each cell",
        markdown_table(table, ["sampler", ""] + [f"{d}, {v} V^" for d, v in cells]),
    )
    rep.add_section(
        "Cost per response (exact V^; means over the costed trees)",
        markdown_table(
            cost,
            [
                "sampler",
                "",
                "depths",
                "steps",
                "forward tokens",
                "V^ evals",
                "proposals",
                "unfinished",
            ],
            digits=1,
        ),
    )
    rep.write(args.out)
