"""ABC toy (paper Example 3.1): KL(pi* || output) vs horizon H for values learned from N samples.

Setup (our reading of the paper's toy; its exact tilt is not public):
- vocabulary {A, B, C}, pi_ref uniform at every prefix (``--pi-ref random`` for Dirichlet(1)
  tables), responses of exactly H tokens;
- tilt tau(y) = 1 if y has no two consecutive A's, else 0, so pi* = pi_ref conditioned on "no AA";
- learned value V^ from N responses drawn from pi_ref (Monte Carlo, as a value head is trained):
  for a prefix s seen n(s) times with tau summing to S(s),
      V^(s) = (S(s) + m * V^(parent(s))) / (n(s) + m),     m = ``--prior`` (default 1),
  i.e. the mean outcome through s shrunk towards the parent's estimate; an unseen prefix inherits
  its parent's value (a one-step-late value, the failure mode of paper Example 3.2). At leaves the
  samplers use tau itself. V^ > 0 at every internal node, so no sampler ever dead-ends at the root.

Metrics, for each (H, N) and each of ``--repeats`` independent training sets:
- exact KL(pi* || law of the sampler's output) over all 3^H responses, from ``mlx_vgb.laws``:
  ActionLevelRS is a forward chain q(c|s) ∝ pi_ref(c|s) V^(s.c), restarted on a dead end; the
  practical VGB walk (Enumerate, no laziness, stop at the first leaf) is absorbed at its first
  leaf, and on a tree the absorbed law is the forward chain q(c|s) ∝ w_c (1 - h(c)), where w_c is
  the walk weight of child c and h(c) the probability that the walk from c returns to s before
  it is absorbed (h(s) = p_up / (1 - sum_c p_c h(c)), leaves h = 0); the lazy walk's law after T
  steps by iterating its transition matrix;
- a sampled check: ``--samples`` responses from each sampler (the real ``VGB`` and
  ``ActionLevelRS`` classes), KL(pi* || empirical) on the pushforward "last two tokens" (8 values
  under pi*; add-1/2 smoothing of the empirical counts, which biases it up by about 4 / samples), next to the exact pushforward KL it
  estimates, and the cost per response (walk steps, verifier evaluations).
Error bars: standard error over the repeats (independent V^ fits and sampler seeds).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import VGB, ActionLevelRS, Enumerate, toy
from ..laws import action_rs_law, lazy_vgb_law, vgb_law  # noqa: F401 - used by perf and tests
from ..protocols import BaseVerifier
from ..vgb import default_max_tries, default_steps_per_try
from .harness import settings
from .report import Report, markdown_table, mean_se, plot_grid

NAMES = "ABC"
NAN = float("nan")
FULL = dict(horizons=[6, 8, 10], ns=[500, 1000, 10000], repeats=8, samples=300)
QUICK = dict(horizons=[6, 8], ns=[500, 10000], repeats=2, samples=60)


def add_args(p) -> None:
    p.add_argument("--horizons", type=int, nargs="+", default=None, help="H values (6 8 10)")
    p.add_argument(
        "--ns",
        type=int,
        nargs="+",
        default=None,
        help="training-set sizes N for the learned value (500 1000 10000)",
    )
    p.add_argument("--repeats", type=int, default=None, help="independent V^ fits per (H, N)")
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="responses drawn from each sampler per repeat (sampled KL check)",
    )
    p.add_argument(
        "--prior",
        type=float,
        default=1.0,
        help="shrinkage strength m of the Monte Carlo value towards the parent value",
    )
    p.add_argument("--pi-ref", choices=["uniform", "random"], default="uniform")


def no_aa(y: tuple[int, ...]) -> float:
    return 0.0 if any(a == 0 and b == 0 for a, b in zip(y, y[1:])) else 1.0


def last_two(y: tuple[int, ...]) -> str:
    """The statistic of the sampled check: the final two tokens, where V^ is worst (the deepest
    prefixes are the least covered by the N training samples)."""
    return "".join(NAMES[t] for t in y[-2:])


class MonteCarloValue(BaseVerifier):
    """V^ fitted on N pi_ref samples (see the module docstring); tau exact at leaves."""

    def __init__(
        self, lm: toy.TabularLM, tilt, horizon: int, n: int, seed: int, prior: float = 1.0
    ):
        self.lm, self._tilt, self.horizon, self.prior = lm, tilt, horizon, prior
        rng = np.random.default_rng(seed)
        self.count: dict[tuple, int] = {}
        self.total: dict[tuple, float] = {}
        for _ in range(n):
            y: tuple[int, ...] = ()
            prefixes = [y]
            for _h in range(horizon):
                p = lm.probs(y)
                y = y + (int(rng.choice(len(p), p=p)),)
                prefixes.append(y)
            r = float(tilt(y))
            for s in prefixes[:-1]:
                self.count[s] = self.count.get(s, 0) + 1
                self.total[s] = self.total.get(s, 0.0) + r
        self._memo: dict[tuple, float] = {}

    def v(self, s: tuple[int, ...]) -> float:
        out = self._memo.get(s)
        if out is None:
            parent = self.v(s[:-1]) if s else 0.5
            out = (self.total.get(s, 0.0) + self.prior * parent) / (
                self.count.get(s, 0) + self.prior
            )
            self._memo[s] = out
        return out

    def value(self, prefixes):
        return np.array([self.v(tuple(p)) for p in prefixes])

    def tilt(self, responses):
        return np.array([float(self._tilt(tuple(r))) for r in responses])


def kl_smoothed(p: dict, counts: dict, support) -> float:
    """KL(p || empirical) with add-1/2 smoothing of the counts over ``support``."""
    n = sum(counts.values()) + 0.5 * len(support)
    return sum(v * math.log(v / ((counts.get(k, 0) + 0.5) / n)) for k, v in p.items() if v > 0)


def pushforward(dist: dict, f) -> dict:
    out: dict = {}
    for y, p in dist.items():
        out[f(y)] = out.get(f(y), 0.0) + p
    return out


@dataclass
class ABCRow:
    horizon: int
    n: int
    repeat: int
    sampler: str
    kl_exact: float
    tv_exact: float
    kl_last2_exact: float
    kl_last2_sampled: float
    tv_sampled_vs_exact_law: float  # pushforward: sampler code vs closed form
    steps: float
    verifier_evals: float
    restarts: float
    reward: float
    wall_ms: float


def make_lm(kind: str, seed: int) -> toy.TabularLM:
    if kind == "uniform":
        return toy.TabularLM.uniform(3, names=NAMES)
    return toy.TabularLM.random(3, seed=seed, names=NAMES)


def run(args) -> None:
    cfg = settings(args, FULL, QUICK, ("horizons", "ns", "repeats", "samples"))
    cfg.update(
        prior=args.prior,
        pi_ref=args.pi_ref,
        tilt="no two consecutive A's",
        seed=args.seed,
        value_estimator="Monte Carlo mean through the prefix, shrunk to "
        "the parent value with prior strength m",
        samplers=["vgb", "action-rs"],
        choice="Enumerate()",
    )
    lm = make_lm(args.pi_ref, args.seed)
    rows: list[ABCRow] = []
    refs = []
    t_start = time.perf_counter()
    for H in cfg["horizons"]:
        pi_star = toy.target(lm, no_aa, H)
        ref = toy.leaves(lm, H)
        pf_star = pushforward(pi_star, last_two)
        support = sorted(set(pushforward(ref, last_two)))
        exact = toy.ExactValue(lm, no_aa, H)  # control: with V* both laws are pi*
        refs.append(
            dict(
                horizon=H,
                kl_pi_ref=toy.kl(pi_star, ref),
                accept_rate=sum(p for y, p in ref.items() if no_aa(y) > 0),
                kl_vgb_exact_value=toy.kl(pi_star, vgb_law(lm, exact, H)),
                kl_action_rs_exact_value=toy.kl(pi_star, action_rs_law(lm, exact, H)),
            )
        )
        for N in cfg["ns"]:
            for r in range(cfg["repeats"]):
                fit_seed = 1_000_003 * args.seed + 7919 * r + 31 * N + H
                vhat = MonteCarloValue(lm, no_aa, H, N, seed=fit_seed, prior=args.prior)
                laws = {"vgb": vgb_law(lm, vhat, H), "action-rs": action_rs_law(lm, vhat, H)}
                T = default_steps_per_try(H)
                lazy_law, p_leaf = lazy_vgb_law(lm, vhat, H, T)
                tries = default_max_tries(H)  # VGB(lazy=True)'s default
                exp_tries = (1 - (1 - p_leaf) ** tries) / p_leaf
                rows.append(
                    ABCRow(
                        horizon=H,
                        n=N,
                        repeat=r,
                        sampler="vgb-lazy",
                        kl_exact=toy.kl(pi_star, lazy_law),
                        tv_exact=toy.tv(pi_star, lazy_law),
                        kl_last2_exact=toy.kl(pf_star, pushforward(lazy_law, last_two)),
                        kl_last2_sampled=NAN,
                        tv_sampled_vs_exact_law=NAN,
                        steps=T * exp_tries,
                        verifier_evals=NAN,
                        restarts=exp_tries - 1,
                        reward=1.0 - (1 - p_leaf) ** tries,
                        wall_ms=NAN,
                    )
                )
                for name, sampler in (
                    ("vgb", VGB(horizon=H, choice=Enumerate())),
                    ("action-rs", ActionLevelRS(horizon=H, choice=Enumerate())),
                ):
                    law = laws[name]
                    t0 = time.perf_counter()
                    res = [
                        sampler.sample(lm, vhat, seed=fit_seed * 10_007 + i)
                        for i in range(cfg["samples"])
                    ]
                    wall = (time.perf_counter() - t0) / max(1, len(res))
                    counts: dict = {}
                    for x in res:
                        c = last_two(x.tokens)
                        counts[c] = counts.get(c, 0) + 1
                    emp = {k: v / len(res) for k, v in counts.items()}
                    pf_law = pushforward(law, last_two)
                    rows.append(
                        ABCRow(
                            horizon=H,
                            n=N,
                            repeat=r,
                            sampler=name,
                            kl_exact=toy.kl(pi_star, law),
                            tv_exact=toy.tv(pi_star, law),
                            kl_last2_exact=toy.kl(pf_star, pf_law),
                            kl_last2_sampled=kl_smoothed(pf_star, counts, support),
                            tv_sampled_vs_exact_law=toy.tv(emp, pf_law),
                            steps=float(np.mean([x.stats.steps for x in res])),
                            verifier_evals=float(np.mean([x.stats.verifier_evals for x in res])),
                            restarts=float(np.mean([x.stats.restarts for x in res])),
                            reward=float(np.mean([x.tilt for x in res])),
                            wall_ms=1000 * wall,
                        )
                    )
        print(f"[abc] H={H} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    write(args, cfg, rows, refs, lm)


def _agg(rows: list[ABCRow], key: str, **sel) -> tuple[float, float]:
    xs = [getattr(r, key) for r in rows if all(getattr(r, k) == v for k, v in sel.items())]
    xs = [x for x in xs if not math.isnan(x)]
    return mean_se(xs)


SAMPLERS = ("vgb", "action-rs", "vgb-lazy")
COLORS = {"vgb": "tab:blue", "action-rs": "tab:red", "vgb-lazy": "tab:green"}


def write(args, cfg, rows: list[ABCRow], refs: list[dict], lm) -> None:
    out = Path(args.out)
    rep = Report(task="abc", command=args.command, config=cfg)
    rep.rows = [asdict(r) for r in rows]
    table, summary = [], {}
    for H in cfg["horizons"]:
        for N in cfg["ns"]:
            row = {"H": H, "N": N}
            cell = {}
            for s in SAMPLERS:
                m, se = _agg(rows, "kl_exact", horizon=H, n=N, sampler=s)
                row[f"KL {s}"] = f"{m:.4f} ± {se:.4f}"
                cell[f"kl_{s}"], cell[f"kl_se_{s}"] = m, se
                row[f"steps {s}"] = cell[f"steps_{s}"] = _agg(
                    rows, "steps", horizon=H, n=N, sampler=s
                )[0]
                if s != "vgb-lazy":
                    ms, ses = _agg(rows, "kl_last2_sampled", horizon=H, n=N, sampler=s)
                    me, _ = _agg(rows, "kl_last2_exact", horizon=H, n=N, sampler=s)
                    row[f"last2 {s}"] = f"{ms:.4f} ± {ses:.4f} ({me:.4f})"
                    row[f"V^ evals {s}"] = cell[f"verifier_evals_{s}"] = _agg(
                        rows, "verifier_evals", horizon=H, n=N, sampler=s
                    )[0]
            cell["kl_ratio_rs_over_vgb"] = row["KL RS / VGB"] = cell["kl_action-rs"] / max(
                cell["kl_vgb"], 1e-12
            )
            cell["kl_ratio_rs_over_vgb_lazy"] = row["KL RS / VGB-lazy"] = cell[
                "kl_action-rs"
            ] / max(cell["kl_vgb-lazy"], 1e-12)
            cell["steps_ratio_vgb_over_rs"] = row["steps VGB / RS"] = cell["steps_vgb"] / max(
                cell["steps_action-rs"], 1e-12
            )
            cell["steps_ratio_vgb_lazy_over_rs"] = row["steps VGB-lazy / RS"] = cell[
                "steps_vgb-lazy"
            ] / max(cell["steps_action-rs"], 1e-12)
            table.append(row)
            summary[f"H{H}_N{N}"] = cell
    wins = sum(1 for c in summary.values() if c["kl_vgb"] < c["kl_action-rs"])
    wins_lazy = sum(1 for c in summary.values() if c["kl_vgb-lazy"] < c["kl_action-rs"])
    tvs = [r.tv_sampled_vs_exact_law for r in rows if not math.isnan(r.tv_sampled_vs_exact_law)]
    rep.summary = {
        "cells": summary,
        "vgb_lower_kl_cells": wins,
        "vgb_lazy_lower_kl_cells": wins_lazy,
        "cells_total": len(table),
        "reference": refs,
        "max_tv_sampled_vs_exact_law": max(tvs),
    }
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    rep.add_section(
        "Exact KL(pi* || output law), mean ± s.e. over repeats",
        f"Practical VGB (stop at the first leaf) has the lower KL in {wins} of {len(table)} "
        f"(H, N) cells; the theory variant (lazy, T = 12 H^2 steps per try, restart unless on a "
        f"leaf) in {wins_lazy} of {len(table)}.\n\n"
        + markdown_table(
            table,
            ["H", "N", "KL vgb", "KL action-rs", "KL vgb-lazy", "KL RS / VGB", "KL RS / VGB-lazy"],
            digits=4,
        )
        + "\nCost per response (means; ActionLevelRS steps include its restarts; VGB-lazy steps "
        "are T x expected tries from the closed form, V^ evaluations are per response in the "
        "sampled runs):\n\n"
        + markdown_table(
            table,
            [
                "H",
                "N",
                "steps vgb",
                "steps action-rs",
                "steps vgb-lazy",
                "steps VGB / RS",
                "steps VGB-lazy / RS",
                "V^ evals vgb",
                "V^ evals action-rs",
            ],
            digits=1,
        ),
    )
    rep.add_section(
        "Sampled check: KL on the last two tokens",
        f"{cfg['samples']} responses per sampler and repeat from the real samplers; the sampled "
        "estimate (add-1/2 smoothing, mean ± s.e.) and, in brackets, the exact pushforward KL of "
        "the closed-form law it estimates. The largest TV between a sampled pushforward and its "
        f"closed form is {max(tvs):.3f} (expected sampling noise at this size is up to "
        f"{0.5 * math.sqrt(9 / cfg['samples']):.3f}).\n\n"
        + markdown_table(table, ["H", "N", "last2 vgb", "last2 action-rs"]),
    )
    rep.add_section(
        "Reference: pi_ref, and the exact value V*",
        markdown_table(
            refs,
            [
                "horizon",
                "kl_pi_ref",
                "accept_rate",
                "kl_vgb_exact_value",
                "kl_action_rs_exact_value",
            ],
            digits=4,
        )
        + "\nKL(pi* || pi_ref) = -log P(tau = 1): what ignoring the verifier costs. With the "
        "exact value V* both closed-form laws are pi* (KL ~ 0): a check of the closed forms.",
    )
    hs = cfg["horizons"]

    def series(key, samplers, **style):
        out_ = []
        for s in samplers:
            st = [_agg(rows, key, horizon=H, n=N_, sampler=s) for H in hs]
            out_.append(
                {
                    "label": s,
                    "x": hs,
                    "y": [m for m, _ in st],
                    "err": [e for _, e in st],
                    "color": COLORS[s],
                    **style,
                }
            )
        return out_

    panels = []
    for N_ in cfg["ns"]:
        panels.append({"title": f"V^ from N={N_} samples", "series": series("kl_exact", SAMPLERS)})
    plot_grid(
        out / "kl_vs_horizon.png",
        panels,
        xlabel="horizon H",
        ylabel="KL(pi* || output law)",
        logy=True,
        suptitle="ABC toy: exact KL to the target vs horizon (mean ± s.e.)",
    )
    panels = []
    for N_ in cfg["ns"]:
        sp = series("kl_last2_sampled", ("vgb", "action-rs"))
        ex = series("kl_last2_exact", ("vgb", "action-rs"), linestyle=":")
        for e in ex:
            e["label"] += " (exact)"
        panels.append({"title": f"N={N_}", "series": sp + ex})
    plot_grid(
        out / "kl_last2_sampled.png",
        panels,
        xlabel="horizon H",
        ylabel="KL on the last two tokens",
        suptitle="ABC toy: sampled check (solid: sampled, dotted: closed form)",
    )
    panels = []
    for N_ in cfg["ns"]:
        panels.append({"title": f"N={N_}", "series": series("steps", SAMPLERS)})
    plot_grid(
        out / "cost_vs_horizon.png",
        panels,
        xlabel="horizon H",
        logy=True,
        ylabel="walk steps per response",
        suptitle="ABC toy: cost per response",
    )
    rep.plots = ["kl_vs_horizon.png", "kl_last2_sampled.png", "cost_vs_horizon.png"]
    rep.write(out)
