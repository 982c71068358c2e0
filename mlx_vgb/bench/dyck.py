"""Dyck grammar (the paper's Figure 1): accuracy vs diversity at matched query budgets.

A small llama trained from scratch on Dyck strings (``mlx_vgb/assets/dyck/lm``) completes
out-of-distribution prompts (bracket type probabilities 0.8 / 0.2 instead of 0.2 / 0.8); its
value head (``mlx_vgb/assets/dyck/verifier``, trained by ``mlx-vgb train-verifier`` on Monte
Carlo rollouts) guides the samplers; leaves are scored by the exact validity check.

Every method draws samples on each prompt until a budget of model forward tokens is spent: the
distinct prefixes whose next-token distribution or value V^ it asked for (with a value head on
the generator's hidden states, each needs one token forward; revisits are free). A sample that
would overrun the budget is not counted. Metrics per method: accuracy (valid samples / samples)
and diversity (distinct valid completions per prompt, averaged over prompts).

Not through the batched engine (``mlx_vgb.engine``): the walks run on ``MemoTreeLM``, not
``MLXLanguageModel``; it batches its own way (a prefix's expansion is one forward over all the
vocabulary's children) and memoizes every prefix across all runs and methods on a prompt, so a
run after the first mostly reads the memo and asks for no forward at all; what a run would cost
is counted apart (``run_cost``). The engine serves ``MLXLanguageModel`` forwards only; and the
runs of a method on a prompt are sequential by design (each gets the budget the earlier ones
left, and ``run_cost`` is read between runs). The LM-alone accuracy and the head's check are
batched ancestral rollouts (``rollouts.sample_completions``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..actions import Blocks, Tokens
from ..atomic import atomic_write
from ..baselines import BlockBestOfN, BlockRS, Plain
from ..children import Candidates
from ..model_verifier import ValueHeadVerifier
from ..sampler import Sampler
from ..tasks.dyck import completion_tilt
from ..vgb import VGB, ActionLevelRS
from .memo_lm import MemoTreeLM
from .report import Report, markdown_table

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "dyck"
DEFAULT_LM = ASSETS / "lm"
DEFAULT_VERIFIER = ASSETS / "verifier"
DEFAULT_PROMPTS = 12
DEFAULT_BUDGET = 512
EVAL_SEED = 20_251_003  # eval prompts; the head's training prompts use other seeds
BLOCK_LENGTHS = (1, 2, 4, 8, 16)
BLOCK_N = (2, 4, 8, 16, 32)


# -- methods --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    family: str  # plain | action-rs | block-bon | block-rs | vgb
    label: str
    make: Callable[[int], Sampler]  # horizon -> sampler
    block: int = 1
    n: int | None = None  # candidates K / N
    drift: float | None = None


def methods(quick: bool) -> list[Method]:
    Ls = (1, 4) if quick else BLOCK_LENGTHS
    Ns = (2, 8) if quick else BLOCK_N
    Ks = (4,) if quick else (2, 4, 8)
    out = [Method("plain", "plain", lambda H: Plain(horizon=H))]
    for k in Ks:
        out.append(
            Method(
                "action-rs",
                f"action-rs K={k}",
                lambda H, k=k: ActionLevelRS(horizon=H, choice=Candidates(k)),
                n=k,
            )
        )
    for L in Ls:
        for n in Ns:
            act = Tokens() if L == 1 else Blocks(L)
            out.append(
                Method(
                    "block-bon",
                    f"block-bon L={L} N={n}",
                    lambda H, a=act, n=n: BlockBestOfN(horizon=H, actions=a, n=n),
                    block=L,
                    n=n,
                )
            )
            out.append(
                Method(
                    "block-rs",
                    f"block-rs L={L} N={n}",
                    lambda H, a=act, n=n: BlockRS(horizon=H, actions=a, n=n),
                    block=L,
                    n=n,
                )
            )
    vgb = (
        [(1, 4, 1.0), (1, 4, 0.5), (1, 4, 0.25)]
        if quick
        else [
            (1, 4, 1.0),
            (1, 2, 0.5),
            (1, 4, 0.5),
            (1, 8, 0.5),
            (1, 4, 0.25),
            (2, 4, 0.5),
            (4, 4, 0.5),
        ]
    )
    for L, k, lam in vgb:
        act = Tokens() if L == 1 else Blocks(L)
        out.append(
            Method(
                "vgb",
                f"vgb L={L} K={k} lambda={lam:g}",
                lambda H, a=act, k=k, lam=lam: VGB(
                    horizon=H, actions=a, choice=Candidates(k), drift=lam
                ),
                block=L,
                n=k,
                drift=lam,
            )
        )
    return out


# -- the run --------------------------------------------------------------------------------


@dataclass
class PromptOutcome:
    samples: int
    valid: int
    distinct_valid: int
    cost: int  # forward tokens of the counted samples
    runs: int


def run_on_prompt(
    method: Method,
    lm: MemoTreeLM,
    verifier: ValueHeadVerifier,
    prompt: Sequence[int],
    horizon: int,
    budget: int,
    seed: int,
    max_runs: int = 4096,
) -> PromptOutcome:
    """Samples until ``budget`` forward tokens are spent; the overrunning sample is dropped."""
    used = samples = valid = runs = 0
    good: set[tuple[int, ...]] = set()
    base = method.make(horizon)
    while used < budget and runs < max_runs:
        sampler = replace(base, max_forward_tokens=budget - used)
        r = sampler.sample(lm, verifier, prompt=prompt, seed=seed + runs)
        runs += 1
        cost = lm.run_cost
        if used + cost > budget or not r.reached_leaf:
            used += cost
            break
        used += cost
        samples += 1
        if completion_tilt(tuple(prompt), r.tokens):
            valid += 1
            good.add(r.tokens)
    return PromptOutcome(samples, valid, len(good), used, runs)


def _dominance(r: dict, others: list[dict]) -> str:
    by = [
        b["method"]
        for b in others
        if b["distinct_correct"] >= r["distinct_correct"] and b["accuracy"] >= r["accuracy"]
    ]
    if not by:
        return "not dominated"
    return f"dominated by {by[0]}" + (f" (+{len(by) - 1} more)" if len(by) > 1 else "")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (higher is better in both coordinates)."""
    idx = []
    for i, (x, y) in enumerate(points):
        if not any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        ):
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def add_args(p) -> None:
    p.add_argument("--lm", default=str(DEFAULT_LM), help="Dyck LM folder (mlx-lm)")
    p.add_argument("--verifier", default=str(DEFAULT_VERIFIER), help="verifier folder")
    p.add_argument(
        "--prompts",
        type=int,
        default=None,
        help=f"number of OOD prompts (default {DEFAULT_PROMPTS}; quick 6)",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"forward tokens per prompt and method (default {DEFAULT_BUDGET}; quick 256)",
    )
    p.add_argument(
        "--leaf",
        choices=("head", "exact"),
        default="head",
        help="value at complete responses: the learned head (default; the outcome "
        "check only scores) or the exact outcome check (then every sampler that "
        "weighs leaves by it is correct by construction)",
    )


def lm_alone_accuracy(model, prompts: list[dict], n: int, seed: int) -> float:
    """Accuracy of plain sampling from the LM, by batched ancestral sampling (n per prompt)."""
    from ..rollouts import rollout_rng, sample_completions
    from ..tasks import dyck

    ok = tot = 0
    for p in prompts:
        ids = [dyck.BOS] + dyck.encode(p["prompt"])
        u = np.stack([rollout_rng(seed, p["id"], k).random(p["max_tokens"]) for k in range(n)])
        for c in sample_completions(model, ids, u, p["max_tokens"], [dyck.EOS]):
            ok += dyck.is_valid_completion(ids, c)
            tot += 1
    return ok / tot


def head_auc_on(model, head, prompts: list[dict], n: int, seed: int):
    """Held-out check of the value head: fresh rollouts on ``prompts``, AUC etc."""
    from ..rollouts import Rollout, rollout_rng, sample_completions
    from ..tasks import dyck
    from ..value_training import evaluate, predict_values, target_features, value_targets

    rolls = []
    for p in prompts:
        ids = [dyck.BOS] + dyck.encode(p["prompt"])
        u = np.stack([rollout_rng(seed, p["id"], k).random(p["max_tokens"]) for k in range(n)])
        for k, c in enumerate(sample_completions(model, ids, u, p["max_tokens"], [dyck.EOS])):
            rolls.append(
                Rollout(p["id"], k, ids, c, "", float(dyck.is_valid_completion(ids, c)), "stop")
            )
    t = value_targets(rolls)
    feats = target_features(model, rolls, t, pad_id=dyck.PAD)
    return evaluate(predict_values(head, feats), t)


def run(args) -> None:
    from mlx_lm import load

    from ..tasks import dyck
    from ..verifier_format import load_verifier

    quick = args.quick
    n_prompts = args.prompts or (6 if quick else DEFAULT_PROMPTS)
    budget = args.budget or (256 if quick else DEFAULT_BUDGET)
    t0 = time.perf_counter()
    model, _ = load(args.lm)
    _, head, _ = load_verifier(args.verifier)
    prompts = dyck.make_prompts(
        n_prompts, EVAL_SEED + args.seed, dyck.OOD_TYPE_PROBS, id_prefix="eval"
    )
    lm = MemoTreeLM(model, head, [dyck.EOS])
    # leaves: the exact validity check, or the head's own value ("head": learned everywhere)
    ver = ValueHeadVerifier(lm, tilt=completion_tilt if args.leaf == "exact" else None)
    ms = methods(quick)

    n_alone = 8 if quick else 32
    alone = lm_alone_accuracy(model, prompts, n_alone, args.seed + 1)
    head_m = head_auc_on(model, head, prompts, 4 if quick else 16, args.seed + 2)
    print(
        f"[dyck] LM alone OOD accuracy {alone:.3f}; head AUC on fresh OOD rollouts {head_m.auc:.3f}"
    )

    per = {m.label: [] for m in ms}
    for i, p in enumerate(prompts):
        ids = [dyck.BOS] + dyck.encode(p["prompt"])
        for m in ms:
            per[m.label].append(
                run_on_prompt(
                    m, lm, ver, ids, p["max_tokens"], budget, seed=1000 * args.seed + 7919 * i
                )
            )
        print(
            f"[dyck] prompt {i + 1}/{len(prompts)} done ({time.perf_counter() - t0:.0f}s, "
            f"{lm.expansions} expansions)",
            flush=True,
        )

    rows = []
    for m in ms:
        outs = per[m.label]
        S = sum(o.samples for o in outs)
        rows.append(
            {
                "method": m.label,
                "family": m.family,
                "block": m.block,
                "n": m.n,
                "drift": m.drift,
                "accuracy": (sum(o.valid for o in outs) / S) if S else None,
                "distinct_correct": float(np.mean([o.distinct_valid for o in outs])),
                "samples": S / len(outs),
                "valid": sum(o.valid for o in outs) / len(outs),
                "tokens_per_sample": (sum(o.cost for o in outs) / S) if S else None,
            }
        )

    base_rows = [r for r in rows if r["family"] != "vgb" and r["accuracy"] is not None]
    front = [
        base_rows[i]
        for i in pareto_front([(r["distinct_correct"], r["accuracy"]) for r in base_rows])
    ]
    for r in rows:
        if r["family"] == "vgb" and r["accuracy"] is not None:
            r["vs_front"] = _dominance(r, base_rows)
            r["vs_block_front"] = _dominance(
                r, [b for b in base_rows if b["family"].startswith("block")]
            )
    out = Path(args.out)
    rep = Report(
        task="dyck",
        command=args.command,
        config={
            "lm": args.lm,
            "verifier": args.verifier,
            "prompts": n_prompts,
            "budget": budget,
            "eval_prompt_seed": EVAL_SEED + args.seed,
            "type_probs_prompts": dyck.OOD_TYPE_PROBS,
            "leaf_value": args.leaf,
            "quick": quick,
        },
    )
    rep.rows = rows
    rep.summary = {
        "lm_alone_ood_accuracy": alone,
        "lm_alone_samples_per_prompt": n_alone,
        "head_auc_fresh_ood": head_m.auc,
        "head_brier_fresh_ood": head_m.brier,
        "pareto_front": [f["method"] for f in front],
        "wall_s": time.perf_counter() - t0,
    }
    rep.add_section(
        "Summary",
        (
            f"- LM alone (plain sampling, {n_alone} samples x {n_prompts} OOD prompts): accuracy "
            f"**{alone:.3f}**\n"
            f"- value head on fresh OOD rollouts: AUC **{head_m.auc:.3f}**, Brier "
            f"{head_m.brier:.4f} ({head_m.n_prefixes} prefixes)\n"
            f"- budget: {budget} forward tokens per prompt and method; value at leaves: "
            f"{'the learned head (the validity check only scores)' if args.leaf == 'head' else 'the exact validity check'}\n"
            f"- baselines' Pareto front (distinct correct, accuracy): "
            + ", ".join(
                f"{f['method']} ({f['distinct_correct']:.1f}, {f['accuracy']:.3f})" for f in front
            )
        ),
    )
    cols = [
        "method",
        "accuracy",
        "distinct_correct",
        "samples",
        "tokens_per_sample",
        "vs_block_front",
        "vs_front",
    ]
    heads = {
        "distinct_correct": "distinct correct / prompt",
        "samples": "samples / prompt",
        "tokens_per_sample": "forward tokens / sample",
        "vs_block_front": "VGB vs Block BoN / RS",
        "vs_front": "VGB vs all baselines",
    }
    rep.add_section("Accuracy and diversity at matched budget", markdown_table(rows, cols, heads))
    rep.add_section("Value head calibration (fresh OOD rollouts)", head_m.calibration_table())
    plot_pareto(out / "accuracy_vs_diversity.png", rows, front, budget)
    rep.plots = ["accuracy_vs_diversity.png"]
    rep.write(out)


def plot_pareto(path: Path, rows: list[dict], front: list[dict], budget: int) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {
        "plain": ("k", "s"),
        "action-rs": ("tab:green", "^"),
        "block-bon": ("tab:blue", "o"),
        "block-rs": ("tab:orange", "o"),
        "vgb": ("tab:red", "*"),
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for fam, (color, marker) in style.items():
        rs = [r for r in rows if r["family"] == fam and r["accuracy"] is not None]
        if rs:
            ax.scatter(
                [r["distinct_correct"] for r in rs],
                [r["accuracy"] for r in rs],
                c=color,
                marker=marker,
                s=110 if fam == "vgb" else 30,
                label=fam,
                alpha=0.9,
                edgecolors="k" if fam == "vgb" else "none",
                zorder=3,
            )
    ax.plot(
        [f["distinct_correct"] for f in front],
        [f["accuracy"] for f in front],
        "--",
        color="gray",
        label="baselines' Pareto front",
        zorder=2,
    )
    for r in rows:
        if r["family"] == "vgb" and r["accuracy"] is not None:
            ax.annotate(
                r["method"].replace("vgb ", ""),
                (r["distinct_correct"], r["accuracy"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("distinct correct completions per prompt")
    ax.set_ylabel("accuracy (valid / samples)")
    ax.set_title(f"Dyck, OOD prompts, {budget} forward tokens per prompt", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
