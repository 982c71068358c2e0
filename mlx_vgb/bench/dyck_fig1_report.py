"""The report of ``bench dyck_fig1``: the domination verdict per leaf mode, budget and count,
every point, and one Fig. 1 panel per comparison (``fig1_<leaf>.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..tasks import dyck
from .dyck import EVAL_SEED, pareto_front
from .dyck_fig1 import BOOTSTRAP, aggregate, budget_outcome, fixed_outcome, verdicts
from .report import Report, markdown_table

# -- the report -------------------------------------------------------------------------------


def cells(st: dict) -> list[tuple[str, str, int]]:
    """(protocol, count, budget or fixed n) of every comparison the run reports."""
    out = []
    if "fixed" in st["_protocols"]:
        out.append(("fixed", "-", st["fixed_samples"]))
    if "budget" in st["_protocols"]:
        out += [("budget", c, b) for c in st["_counts"] for b in st["_budgets"]]
    return out


def report(args, st, ms, prompts, rows, out: Path, wall: float) -> None:
    table, verdict_rows, complete = [], [], {}
    for li, leaf in enumerate(st["_leaves"]):
        have = [p for p in prompts if all((leaf, p["id"], m.label) in rows for m in ms)]
        # the budget protocol needs whole sequences, not the first samples only (--fixed-first)
        whole = [p for p in have if not any(rows[(leaf, p["id"], m.label)].get("part") for m in ms)]
        complete[leaf] = len(whole)
        for ci, (proto, count, b) in enumerate(cells(st)):
            ps = have if proto == "fixed" else whole
            if not ps:
                continue
            rng = np.random.default_rng([20_251_003, li, ci])  # each cell its own bootstrap
            points, flags = {}, {}
            for m in ms:
                rs = [rows[(leaf, p["id"], m.label)] for p in ps]
                if proto == "fixed":
                    res = [fixed_outcome(r, b) + ("",) for r in rs]
                else:
                    res = [budget_outcome(r, count, b) for r in rs]
                points[m.label] = [x[:3] for x in res]
                flags[m.label] = [x[3] for x in res]
            vs = verdicts(points, ms, rng)
            for m in ms:
                agg = aggregate(points[m.label])
                table.append(
                    {
                        "leaf": leaf,
                        "protocol": proto,
                        "count": count,
                        "budget": b,
                        "method": m.label,
                        "family": m.family,
                        "block": m.block,
                        "n": m.n,
                        **agg,
                        "capped_prompts": flags[m.label].count("capped"),
                        "ambiguous_prompts": flags[m.label].count("ambiguous"),
                    }
                )
            cell = [t for t in table[-len(ms) :] if t["family"] != "plain"]
            front = [
                cell[i]["method"]
                for i in pareto_front([(t["distinct_correct"], t["accuracy"] or 0.0) for t in cell])
            ]
            free = [v["vgb"] for v in vs if not v["dominated_by"]]
            verdict_rows.append(
                {
                    "leaf": leaf,
                    "protocol": proto,
                    "count": count,
                    "budget": b,
                    "prompts": len(ps),
                    "verdict": "VGB not dominated" if free else "VGB dominated",
                    "undominated_vgb": ", ".join(free) or "-",
                    "per_vgb": vs,
                    "pareto_front": front,
                    "capped_block_points": sum(t["capped_prompts"] > 0 for t in cell),
                }
            )
    rep = Report(
        task="dyck_fig1",
        command=args.command,
        config={
            **{k: v for k, v in st.items() if not k.startswith("_")},
            "leaves": st["_leaves"],
            "protocols": st["_protocols"],
            "budgets": st["_budgets"],
            "counts": st["_counts"],
            "methods": [m.label for m in ms],
            "eval_prompt_seed": EVAL_SEED + args.seed,
            "type_probs_prompts": dyck.OOD_TYPE_PROBS,
        },
    )
    rep.rows = table
    rep.summary = {"verdicts": verdict_rows, "prompts_complete": complete, "wall_s": wall}
    vt = []
    for v in verdict_rows:
        d = {
            k: v[k]
            for k in (
                "leaf",
                "protocol",
                "count",
                "budget",
                "prompts",
                "verdict",
                "undominated_vgb",
                "capped_block_points",
            )
        }
        for x in v["per_vgb"]:
            by = x["dominated_by"]
            d[x["vgb"]] = (
                f"{x['accuracy'] or 0:.3f} / {x['distinct_correct']:.1f}: "
                + (f"dominated by {len(by)} (e.g. {by[0]})" if by else "not dominated")
                + f"; boot {x['boot_dominated']:.2f}"
            )
        vt.append(d)
    vgb_labels = [m.label for m in ms if m.family == "vgb"]
    rep.add_section(
        "Verdict: does any Block BoN / Block RS configuration dominate VGB?",
        (
            f"Prompts complete per leaf mode: {complete} (the fixed protocol's rows may cover more: "
            "its 'prompts' column). Each VGB cell: accuracy / distinct correct "
            "per prompt; the Block configurations that dominate it (>= in both, > in one); 'boot': "
            f"share of {BOOTSTRAP} prompt-bootstrap resamples in which some Block configuration "
            "dominates it. capped_block_points: Block points whose sequence hit --max-samples on "
            "some prompt (their numbers are lower bounds).\n\n"
            + markdown_table(
                vt,
                [
                    "leaf",
                    "protocol",
                    "count",
                    "budget",
                    "prompts",
                    "verdict",
                    *vgb_labels,
                    "capped_block_points",
                ],
            )
        ),
    )
    cols = [
        "leaf",
        "protocol",
        "count",
        "budget",
        "method",
        "accuracy",
        "distinct_correct",
        "samples",
        "capped_prompts",
        "ambiguous_prompts",
    ]
    rep.add_section("All points", markdown_table(table, cols))
    rep.plots = []
    for leaf in st["_leaves"]:
        if any(t["leaf"] == leaf for t in table):
            name = f"fig1_{leaf}.png"
            plot(out / name, [t for t in table if t["leaf"] == leaf], st, leaf)
            rep.plots.append(name)
    rep.write(out)


def plot(path: Path, table: list[dict], st: dict, leaf: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = cells(st)
    fig, axes = plt.subplots(1, len(cs), figsize=(3.0 * len(cs), 3.2), dpi=100, squeeze=False)
    style = {
        "plain": ("k", "s", 25),
        "block-bon": ("tab:blue", "o", 18),
        "block-rs": ("tab:orange", "o", 18),
        "vgb": ("tab:red", "*", 110),
    }
    for ax, (proto, count, b) in zip(axes[0], cs):
        pts = [t for t in table if (t["protocol"], t["count"], t["budget"]) == (proto, count, b)]
        for fam, (c, mk, s) in style.items():
            q = [t for t in pts if t["family"] == fam and t["accuracy"] is not None]
            ax.scatter(
                [t["distinct_correct"] for t in q],
                [t["accuracy"] for t in q],
                c=c,
                marker=mk,
                s=s,
                label=fam,
                edgecolors="k" if fam == "vgb" else "none",
                zorder=3 if fam == "vgb" else 2,
            )
        ax.set_title(f"fixed {b} samples" if proto == "fixed" else f"{b} {count}", fontsize=9)
        ax.set_xlabel("distinct correct / prompt", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("accuracy", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Dyck OOD prompts, leaf value: {leaf}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
