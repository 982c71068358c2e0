"""Dyck fidelity ablation: are VGB's samples closer to pi* than ActionLevelRS's as the head trains?

Prompts: out-of-distribution (bracket types 0.8 / 0.2) with completion length H in 9..13 (20 to
24 prompt brackets), chosen from a pool by plain success (estimated from ``--screen`` plain
samples each): ``--hard`` of them with success in [2%, 20%) (a few valid samples are needed
for pi*), the rest spread evenly over the prompts with success >= 20%.
pi*: ``--pi-samples`` plain samples per prompt (batched ancestral sampling), kept if valid
(and kept in ``pi.json`` with what they came from: a rerun or ``--report-only`` reads them).
Heads: ``value_training.train_head`` (the code behind ``mlx-vgb train-verifier``) for each of
``--epochs`` on Monte Carlo rollouts of ``--train-prompts`` OOD prompts x ``--train-rollouts``
(other seeds than the eval prompts: disjoint), plus the shipped head. Their held-out AUCs are
kept in ``heads.json`` under the settings they came from: ``--report-only`` reads them there
instead of training the heads again (the report needs only the AUCs).
Methods: VGB (``Enumerate()``, lambda = 1, the practical walk) and ActionLevelRS
(``Enumerate()``), ``--samples`` each per prompt and head; leaves valued by the exact check
(default) or the head.
Distances to pi* (the whole pi* sample), per prompt, on whole completions and on summaries (first
3 tokens, count of '(', depth profile = the open / close skeleton): TV = l1 / 2. Noise floors:
the two halves of the pi* sample against each other, and a matched floor (as many pi* samples
as the method has, from one half, against the other half).
Rows (prompt, head, method) go to ``rows.jsonl`` as they finish; a rerun resumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..children import Enumerate
from ..errors import ConfigError
from ..model_verifier import ValueHeadVerifier
from ..resume import read_kept, write_kept
from ..tasks import dyck
from ..vgb import VGB, ActionLevelRS
from .dyck import DEFAULT_LM, DEFAULT_VERIFIER
from .dyck_fig1 import open_rows, parse_list
from .dyck_treelm import DyckTreeLM
from .report import Report, markdown_table

POOL_SEED = 20_251_016  # candidate eval prompts
TRAIN_SEED = 16_016  # the heads' training prompts (the shipped head used seed 1)
PROMPT_LENGTHS = (20, 24)  # H = 33 - k = 9..13
HARD = (0.02, 0.2)
SUMMARIES = ("whole", "first3", "opens", "depth")
METHODS = ("vgb", "action-rs")


def summary(c: str, kind: str):
    """A completion (bracket text, without <eos>) reduced to one summary."""
    if kind == "whole":
        return c
    if kind == "first3":
        return c[:3]
    if kind == "opens":
        return c.count("(")
    return "".join("+" if ch in "([" else "-" for ch in c)  # depth profile


def tv(a: Counter, b: Counter) -> float:
    """Total variation between the empirical laws of two samples (l1 = 2 TV)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return float("nan")
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def reduce(samples: Counter, kind: str) -> Counter:
    out: Counter = Counter()
    for c, n in samples.items():
        out[summary(c, kind)] += n
    return out


def plain_samples(model, prompt: dict, n: int, seed: int, chunk: int = 2000) -> list[str]:
    """``n`` plain completions in chunks: the text without <eos> of a valid one, else None."""
    from ..rollouts import rollout_rng, sample_completions

    ids = [dyck.BOS] + dyck.encode(prompt["prompt"])
    H = prompt["max_tokens"]
    out = []
    for s in range(0, n, chunk):
        u = np.stack(
            [rollout_rng(seed, prompt["id"], k).random(H) for k in range(s, min(n, s + chunk))]
        )
        for c in sample_completions(model, ids, u, H, [dyck.EOS]):
            ok = dyck.is_valid_completion(ids, c)
            out.append(dyck.decode(c[:-1]) if ok else None)
    return out


PI_SEED = 2  # the pi* samples' seed (the screen's is 1)


def pi_star(model, prompts: list[dict], st: dict, cache: Path | None = None, keep=True) -> dict:
    """{prompt id: the valid ones of ``pi_samples`` plain completions}: the pi* sample of each
    prompt. Kept in ``cache`` per prompt (with its text and horizon) under the LM, the count and
    the seed, written after every prompt drawn (``keep`` False: read only): a rerun, or
    ``--report-only``, reads them instead of sampling again."""
    key = {"lm": st.get("lm"), "pi_samples": st["pi_samples"], "seed": PI_SEED}
    kept = read_kept(cache, key)
    store: dict = dict(kept["pi"]) if kept is not None else {}
    out = {}
    for p in prompts:
        e = store.get(p["id"])
        if e is not None and [e["prompt"], e["max_tokens"]] == [p["prompt"], p["max_tokens"]]:
            out[p["id"]] = e["samples"]
            continue
        s = plain_samples(model, p, st["pi_samples"], seed=PI_SEED)
        out[p["id"]] = [c for c in s if c is not None]
        store[p["id"]] = {
            "prompt": p["prompt"],
            "max_tokens": p["max_tokens"],
            "samples": out[p["id"]],
        }
        if cache is not None and keep:
            write_kept(cache, key, {"pi": store})
    return out


PRESCREEN_EASY = 0.5  # success in the pre-screen at or above which a prompt is taken as easy


def screen_rates(model, pool: list[dict], st: dict, cache: Path | None = None) -> dict:
    """Plain success per candidate prompt from ``screen`` samples each; with ``prescreen`` N,
    first from its first N samples (the same draws), and only a prompt below
    ``PRESCREEN_EASY`` there gets the full screen (an LM valid ~96% of the time has few hard
    prompts: they are found in a large pool at a fraction of the cost). Kept in ``cache`` with
    the settings they came from, every 100 prompts as it goes: a rerun reuses them, and a
    screen that was stopped resumes where it stopped."""
    key = {k: st.get(k) for k in ("lm", "seed", "pool", "screen", "prescreen")}
    key |= {"pool_seed": POOL_SEED, "prompt_lengths": list(PROMPT_LENGTHS)}  # the candidates
    kept = read_kept(cache, key)
    rate: dict = dict(kept["rates"]) if kept is not None else {}
    if kept is not None and kept.get("done", True):
        return rate

    def keep(done: bool) -> None:
        if cache is not None:
            write_kept(cache, key, {"rates": rate, "done": done})

    t0 = time.perf_counter()
    n0 = st.get("prescreen") or 0
    for i, p in enumerate(pool):
        if p["id"] in rate:
            continue
        if i and i % 100 == 0:
            keep(False)
            print(
                f"[dyck_fidelity] screened {i}/{len(pool)} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        if n0:
            s = plain_samples(model, p, n0, seed=1)
            r0 = sum(x is not None for x in s) / len(s)
            if r0 >= PRESCREEN_EASY:
                rate[p["id"]] = r0
                continue
        s = plain_samples(model, p, st["screen"], seed=1)
        rate[p["id"]] = sum(x is not None for x in s) / len(s)
    keep(True)
    return rate


def choose_prompts(model, st: dict, cache: Path | None = None) -> tuple[list[dict], dict]:
    pool = dyck.make_prompts(
        st["pool"],
        POOL_SEED + st["seed"],
        dyck.OOD_TYPE_PROBS,
        prompt_lengths=PROMPT_LENGTHS,
        id_prefix="fid",
    )
    rate = screen_rates(model, pool, st, cache)
    hard = [p for p in pool if HARD[0] <= rate[p["id"]] < HARD[1]][: st["hard"]]
    easy = sorted((p for p in pool if rate[p["id"]] >= HARD[1]), key=lambda p: rate[p["id"]])
    k = st["prompts"] - st["hard"]
    if len(hard) < st["hard"] or len(easy) < k:
        raise ConfigError(
            f"the pool of {st['pool']} prompts has {len(hard)} with plain success in "
            f"[{HARD[0]}, {HARD[1]}) and {len(easy)} above; need {st['hard']} and {k}: "
            "raise --pool"
        )
    pick = [easy[int(i)] for i in np.linspace(0, len(easy) - 1, k).round()] if k else []
    return hard + pick, rate


def heads_key(st: dict) -> dict:
    """What the trained heads depend on (``heads.json``'s key)."""
    key = {k: st.get(k) for k in ("lm", "seed", "train_prompts", "train_rollouts", "epochs")}
    return key | {"train_seed": TRAIN_SEED}


def kept_heads(cache: Path | None, st: dict) -> dict | None:
    """{name: (None, held-out AUC)} of the heads trained under ``st``, from ``cache`` (None when
    it is absent or was written under other settings)."""
    kept = read_kept(cache, heads_key(st))
    if kept is None or set(kept.get("auc", {})) != {f"epochs={e}" for e in st["_epochs"]}:
        return None
    return {name: (None, auc) for name, auc in kept["auc"].items()}


def train_heads(model, st: dict, log=print, cache: Path | None = None) -> dict:
    """{name: (head, held-out AUC)}: one head per epoch count, all from the same rollouts; the
    AUCs are kept in ``cache`` (for ``kept_heads``)."""
    from ..rollouts import Rollout, rollout_rng, sample_completions
    from ..value_training import split_by_prompt, target_features, train_head, value_targets

    prompts = dyck.make_prompts(
        st["train_prompts"], TRAIN_SEED + st["seed"], dyck.OOD_TYPE_PROBS, id_prefix="fidtrain"
    )
    rolls = []
    for p in prompts:
        ids = [dyck.BOS] + dyck.encode(p["prompt"])
        n, H = st["train_rollouts"], p["max_tokens"]
        u = np.stack([rollout_rng(TRAIN_SEED, p["id"], k).random(H) for k in range(n)])
        for k, c in enumerate(sample_completions(model, ids, u, H, [dyck.EOS])):
            ok = float(dyck.is_valid_completion(ids, c))
            rolls.append(Rollout(p["id"], k, ids, c, "", ok, "stop"))
    t = value_targets(rolls)
    feats = target_features(model, rolls, t, pad_id=dyck.PAD)
    tr, held = split_by_prompt(t, 0.2, seed=0)
    log(
        f"[dyck_fidelity] {len(rolls)} rollouts, success {np.mean([r.reward for r in rolls]):.3f}, "
        f"{len(t)} prefixes"
    )
    heads = {}
    for e in st["_epochs"]:
        h = train_head(feats, t, train_idx=tr, held_idx=held, epochs=e, seed=0, log=None)
        heads[f"epochs={e}"] = (h.head, h.held_out.auc if h.held_out else None)
        log(f"[dyck_fidelity] head {e} epochs: held-out AUC {heads[f'epochs={e}'][1]:.3f}")
    if cache is not None:
        write_kept(cache, heads_key(st), {"auc": {k: v[1] for k, v in heads.items()}}, indent=1)
    return heads


def add_args(p) -> None:
    p.add_argument("--lm", default=str(DEFAULT_LM), help="Dyck LM folder (mlx-lm)")
    p.add_argument("--verifier", default=str(DEFAULT_VERIFIER), help="shipped head (reference)")
    p.add_argument("--prompts", type=int, default=None, help="eval prompts (default 24; quick 2)")
    p.add_argument(
        "--hard",
        type=int,
        default=None,
        help="of them with plain success in [2%%, 20%%) (default 12; quick 1)",
    )
    p.add_argument(
        "--pool", type=int, default=None, help="candidate prompts (default 400; quick 40)"
    )
    p.add_argument(
        "--screen",
        type=int,
        default=None,
        help="plain samples per candidate to estimate success (default 200; quick 80)",
    )
    p.add_argument(
        "--pi-samples",
        type=int,
        default=None,
        help="plain samples per prompt for pi* (default 5000; quick 800)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples per method, prompt and head (default 1000; quick 20)",
    )
    p.add_argument(
        "--epochs", default=None, help="head training epochs (default 1,2,5,10,30; quick 2)"
    )
    p.add_argument(
        "--train-prompts",
        type=int,
        default=None,
        help="training prompts for the heads (default 300; quick 24)",
    )
    p.add_argument(
        "--train-rollouts",
        type=int,
        default=None,
        help="rollouts per training prompt (default 8; quick 4)",
    )
    p.add_argument(
        "--prescreen",
        type=int,
        default=0,
        help="first screen every candidate with this many samples; only those below "
        f"{PRESCREEN_EASY:g} success get the full --screen (for an LM with few hard prompts "
        "and a large --pool; default 0: off)",
    )
    p.add_argument("--leaf", choices=("exact", "head"), default="exact", help="value at leaves")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the rows so far, over the prompts that have all of theirs "
        "(e.g. while a run goes on); draws no walk (pi* of those prompts comes from pi.json, "
        "or is drawn when missing)",
    )


def _settings(args) -> dict:
    q = args.quick
    st = {
        "lm": str(args.lm),
        "verifier": str(args.verifier),
        "seed": args.seed,
        "leaf": args.leaf,
        "prompts": args.prompts or (2 if q else 24),
        "hard": args.hard or (1 if q else 12),
        "pool": args.pool or (40 if q else 400),
        "screen": args.screen or (80 if q else 200),
        "pi_samples": args.pi_samples or (800 if q else 5000),
        "samples": args.samples or (20 if q else 1000),
        "epochs": args.epochs or ("2" if q else "1,2,5,10,30"),
        "train_prompts": args.train_prompts or (24 if q else 300),
        "train_rollouts": args.train_rollouts or (4 if q else 8),
        "quick": q,
    }
    if getattr(args, "prescreen", 0):  # absent when off: earlier runs' settings still match
        if args.prescreen < 1:
            raise ConfigError(f"--prescreen must be >= 1 (or 0: off), got {args.prescreen}")
        st["prescreen"] = args.prescreen
    st["_epochs"] = parse_list(st["epochs"], "epochs")
    if st["hard"] > st["prompts"]:
        raise ConfigError(f"--hard ({st['hard']}) must be <= --prompts ({st['prompts']})")
    for k in (
        "prompts",
        "pool",
        "screen",
        "pi_samples",
        "samples",
        "train_prompts",
        "train_rollouts",
    ):
        if st[k] < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be >= 1, got {st[k]}")
    return st


def draw(method: str, lm, ver, ids, H: int, n: int) -> tuple[Counter, int]:
    """``n`` samples: the counts of the valid completions' texts, and the invalid / unfinished."""
    s = (
        VGB(horizon=H, choice=Enumerate())
        if method == "vgb"
        else ActionLevelRS(horizon=H, choice=Enumerate())
    )
    got, bad = Counter(), 0
    for i in range(n):
        r = s.sample(lm, ver, prompt=ids, seed=i)
        if r.reached_leaf and dyck.is_valid_completion(ids, r.tokens):
            got[dyck.decode(r.tokens[:-1])] += 1
        else:
            bad += 1
    return got, bad


def distances(got: Counter, pi: list[str], rng) -> dict:
    """TV to the pi* sample per summary, with the half-vs-half and the matched floors."""
    A, B = Counter(pi[0::2]), Counter(pi[1::2])
    full = Counter(pi)
    n = sum(got.values())
    sub = (
        Counter(rng.choice(pi[0::2], size=min(n, len(pi[0::2])), replace=False).tolist())
        if n
        else Counter()
    )
    out = {}
    for k in SUMMARIES:
        out[k] = {
            "tv": tv(reduce(got, k), reduce(full, k)),
            "floor_half": tv(reduce(A, k), reduce(B, k)),
            "floor_matched": tv(reduce(sub, k), reduce(B, k)),
        }
    return out


def run(args) -> None:
    from mlx_lm import load

    from ..verifier_format import load_verifier

    t0 = time.perf_counter()
    st = _settings(args)
    out = Path(args.out)
    path, rows = open_rows(out, st)
    model, _ = load(args.lm)
    _, shipped, _ = load_verifier(args.verifier)
    prompts, rate = choose_prompts(model, st, cache=out / "screen.json")
    report_only = getattr(args, "report_only", False)
    heads = (kept_heads(out / "heads.json", st) if report_only else None) or train_heads(
        model, st, cache=out / "heads.json"
    )
    heads["shipped"] = (shipped, None)
    lm = DyckTreeLM(model, shipped)
    ver = ValueHeadVerifier(lm, tilt=dyck.completion_tilt if st["leaf"] == "exact" else None)
    todo = [
        (p, h, m)
        for p in prompts
        for h in heads
        for m in METHODS
        if (st["leaf"], p["id"], f"{h}|{m}") not in rows
    ]
    print(
        f"[dyck_fidelity] {len(todo)} (prompt, head, method) to sample ({len(rows)} resumed)",
        flush=True,
    )
    if report_only:
        missing = {p["id"] for p, _, _ in todo}
        done = [p for p in prompts if p["id"] not in missing]
        if not done:
            raise ConfigError(
                f"no prompt has all its rows in {path} yet: run without --report-only first"
            )
        # pi* of those prompts only, read-only (a run going on keeps pi.json)
        pis = pi_star(model, done, st, cache=out / "pi.json", keep=False)
        report(args, st, done, rate, heads, pis, rows, out, time.perf_counter() - t0, len(prompts))
        return
    with open(path, "a") as f:
        for j, (p, h, m) in enumerate(todo):
            ids = [dyck.BOS] + dyck.encode(p["prompt"])
            lm.set_head(heads[h][0])
            t = time.perf_counter()
            got, bad = draw(m, lm, ver, ids, p["max_tokens"], st["samples"])
            row = {
                "leaf": st["leaf"],
                "prompt_id": p["id"],
                "method": f"{h}|{m}",
                "head": h,
                "sampler": m,
                "counts": dict(got),
                "invalid_or_unfinished": bad,
                "wall_s": round(time.perf_counter() - t, 2),
            }
            rows[(st["leaf"], p["id"], row["method"])] = row
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
            f.flush()
            print(
                f"[dyck_fidelity] {j + 1}/{len(todo)} {p['id']} {h} {m} "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    pis = pi_star(model, prompts, st, cache=out / "pi.json")
    report(args, st, prompts, rate, heads, pis, rows, out, time.perf_counter() - t0)


def report(
    args, st, prompts, rate, heads, pis, rows, out: Path, wall: float, of: int | None = None
) -> None:
    """The report over ``prompts`` (all of them, or the ``len(prompts)`` of ``of`` that have
    every row: marked UNFINISHED)."""
    rng = np.random.default_rng(0)
    per = []
    for p in prompts:
        for h in heads:
            for m in METHODS:
                r = rows[(st["leaf"], p["id"], f"{h}|{m}")]
                d = distances(Counter(r["counts"]), pis[p["id"]], rng)
                per.append(
                    {
                        "prompt_id": p["id"],
                        "H": p["max_tokens"],
                        "plain_success": rate[p["id"]],
                        "hard": rate[p["id"]] < HARD[1],
                        "pi_valid": len(pis[p["id"]]),
                        "head": h,
                        "method": m,
                        "valid_samples": sum(r["counts"].values()),
                        **{f"{k}_{x}": d[k][x] for k in SUMMARIES for x in d[k]},
                    }
                )
    table = []
    for h in heads:
        for m in METHODS:
            for grp, sel in (
                ("all", lambda r: True),
                ("hard", lambda r: r["hard"]),
                ("easy", lambda r: not r["hard"]),
            ):
                rs = [r for r in per if r["head"] == h and r["method"] == m and sel(r)]
                if not rs:
                    continue
                row = {"head": h, "held_out_auc": heads[h][1], "method": m, "prompts": grp}
                for k in SUMMARIES:
                    row[f"tv_{k}"] = float(np.mean([r[f"{k}_tv"] for r in rs]))
                    row[f"floor_{k}"] = float(np.mean([r[f"{k}_floor_matched"] for r in rs]))
                row["l1_whole"] = 2 * row["tv_whole"]
                table.append(row)
    wins, counts = {}, {}
    for h in heads:
        for k in SUMMARIES:
            a = {
                r["prompt_id"]: r[f"{k}_tv"] for r in per if r["head"] == h and r["method"] == "vgb"
            }
            b = {
                r["prompt_id"]: r[f"{k}_tv"]
                for r in per
                if r["head"] == h and r["method"] == "action-rs"
            }
            wins[f"{h} {k}"] = sum(a[i] < b[i] for i in a) / len(a)
            # exact ties (TV 0 on both sides: pi* has one valid completion) apart
            counts[f"{h} {k}"] = {
                "closer": sum(a[i] < b[i] for i in a),
                "tied": sum(a[i] == b[i] for i in a),
                "farther": sum(a[i] > b[i] for i in a),
            }
    rep = Report(
        task="dyck_fidelity",
        command=args.command,
        config={k: v for k, v in st.items() if not k.startswith("_")},
    )
    rep.rows = per
    unfinished = of is not None and len(prompts) < of
    if unfinished:
        rep.add_section(
            "UNFINISHED",
            f"Over {len(prompts)} of {of} prompts ({sum(rate[p['id']] < HARD[1] for p in prompts)}"
            " of them hard): those with every head's and method's rows so far. Rerun the "
            "command without --report-only to continue.",
        )
    rep.summary = {
        "unfinished": unfinished,
        "prompts_reported": len(prompts),
        "table": table,
        "vgb_closer_share": wins,
        "vgb_closer_tied_farther": counts,
        "wall_s": wall,
        "half_floor": {
            k: float(
                np.mean(
                    [
                        r[f"{k}_floor_half"]
                        for r in per
                        if r["head"] == "shipped" and r["method"] == "vgb"
                    ]
                )
            )
            for k in SUMMARIES
        },
    }
    rep.add_section(
        "Prompts",
        markdown_table(
            [
                {
                    "prompt": p["prompt"],
                    "H": p["max_tokens"],
                    "plain_success": rate[p["id"]],
                    "pi_valid_samples": len(pis[p["id"]]),
                }
                for p in prompts
            ]
        ),
    )
    cols = [
        "head",
        "held_out_auc",
        "method",
        "prompts",
        *[f"tv_{k}" for k in SUMMARIES],
        "l1_whole",
        *[f"floor_{k}" for k in SUMMARIES],
    ]
    rep.add_section(
        "Mean TV to pi* (floor: matched-size pi* sample vs the other half; l1 = 2 TV)",
        markdown_table(table, cols),
    )
    rep.add_section(
        "Half-vs-half noise floor (mean TV over prompts)",
        markdown_table([{"summary": k, "tv": v} for k, v in rep.summary["half_floor"].items()]),
    )
    rep.add_section(
        "Prompts where VGB is closer to pi* than ActionLevelRS, tied with it, farther",
        "Share: closer over all prompts (a tie counts as not closer). Ties are exact (both TV 0: "
        "pi* has a single valid completion, or both samples match it).\n\n"
        + markdown_table([{"head / summary": k, "share": v, **counts[k]} for k, v in wins.items()]),
    )
    plot(out / "tv_vs_epochs.png", table, st)
    rep.plots = ["tv_vs_epochs.png"]
    rep.write(out)


def plot(path: Path, table: list[dict], st: dict) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = list(st["_epochs"])
    fig, axes = plt.subplots(1, len(SUMMARIES), figsize=(3.2 * len(SUMMARIES), 3.0), dpi=100)
    for ax, k in zip(axes, SUMMARIES):
        for m, c in (("vgb", "tab:red"), ("action-rs", "tab:green")):
            for grp, ls in (("all", "-"), ("hard", "--")):
                ys = [
                    next(
                        (
                            r[f"tv_{k}"]
                            for r in table
                            if r["head"] == f"epochs={e}"
                            and r["method"] == m
                            and r["prompts"] == grp
                        ),
                        np.nan,
                    )
                    for e in eps
                ]
                ax.plot(eps, ys, ls, color=c, marker="o", label=f"{m} ({grp})")
        fl = [
            next(
                (
                    r[f"floor_{k}"]
                    for r in table
                    if r["head"] == f"epochs={e}" and r["method"] == "vgb" and r["prompts"] == "all"
                ),
                np.nan,
            )
            for e in eps
        ]
        ax.plot(eps, fl, ":", color="gray", label="noise floor")
        ax.set_xscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("head training epochs", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("TV to pi*", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
