"""Dyck, the paper's Fig. 1 on its own terms: is VGB Pareto-dominated by Block BoN / Block RS?

Methods (the shipped Dyck LM and value head): Block Best-of-N and Block rejection sampling over
L in {1, 2, 4, 8, 16} x N in {2, 4, 8, 16, 32}; VGB at drift lambda = 1 with the exact
``Enumerate()`` step (the action set is the 7 tokens) and the K-candidate step
(``SelfNormalized(K)``, K in {4, 8}); plain sampling as a reference. Prompts: out-of-distribution
(bracket types 0.8 / 0.2), 8 to 24 brackets. Value at leaves: the head, or the exact validity
check (``--leaf``).

Every (leaf mode, prompt, method) draws one sequence of samples (seeds 0, 1, ... shared by all
methods), recording each sample's outcome and its three costs (``dyck_treelm``: LM queries,
forward tokens, walk steps). Both protocols read that sequence:
- *fixed*: the first ``--fixed-samples`` (32) samples, whatever they cost;
- *budget*: for budget B and count c, samples in order while their summed cost c stays <= B; the
  sample that would overrun B is dropped and ends the sequence (as in ``bench dyck``).
The sequence goes on until every count has overrun the largest budget, or ``--max-samples``
(then that budget is *capped*: its numbers are lower bounds, flagged in the report). A single
sample is stopped at max(8192, budgets) queries / forward tokens or twice that in steps (in the
fixed protocol it then counts as a failed sample); where such
a sample was stopped by one count while still under the budget of another, it is dropped there
too and counted as *ambiguous* (reported; conservative for the method it hits).

A prompt's sequences (every leaf mode and method) are drawn at once in an engine
(``--concurrency``), on views of one memo, their memo misses computed together: the same rows as
one at a time, 2.5x faster on the 4 x 256 LM (``memo_lm``).

Rows (one per leaf mode, prompt and method, all samples in compact form) are appended to
``rows.jsonl`` as they finish; a rerun resumes (settings in ``rows.meta.json`` must match).
``--fixed-first``: every prompt's first ``--fixed-samples`` first (rows marked ``"part"``, with
the distinct valid completions in ``"v"``), then each sequence goes on from its part; the budget
protocol is reported over the prompts whose sequences are whole.
Verdict per leaf mode, budget and count: which VGB configurations some Block configuration
Pareto-dominates (accuracy = valid / samples pooled over prompts; distinct correct completions per
prompt), with the share of 200 prompt-bootstrap resamples in which it is dominated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..actions import Blocks, Tokens
from ..atomic import atomic_write
from ..baselines import BlockBestOfN, BlockRS, Plain
from ..children import Enumerate, SelfNormalized
from ..engine import Engine
from ..engine import current as current_engine
from ..errors import ConfigError
from ..model_verifier import ValueHeadVerifier
from ..resume import settings_diff
from ..sampler import Sampler
from ..tasks import dyck
from ..vgb import VGB
from .dyck import BLOCK_LENGTHS, BLOCK_N, DEFAULT_LM, DEFAULT_VERIFIER, EVAL_SEED
from .dyck_treelm import DyckTreeLM
from .harness import check_drained

COUNTS = ("queries", "tokens", "steps")
DEFAULT_BUDGETS = (512, 2048, 8192)
DEFAULT_PROMPTS = 48
DEFAULT_FIXED = 32
DEFAULT_MAX_SAMPLES = 256
BOOTSTRAP = 200
RUN_CAP = 8192  # one sample stops at max(this, largest budget) queries / tokens, 2x that steps
# per-sample outcome codes in a row's "o" string
VALID_NEW, VALID_AGAIN, INVALID, UNFINISHED, STOPPED = "1", "2", "0", "u", "t"


@dataclass(frozen=True)
class Method:
    family: str  # plain | block-bon | block-rs | vgb
    label: str
    block: int = 1
    n: int | None = None

    def make(self, H: int) -> Sampler:
        act = Tokens() if self.block == 1 else Blocks(self.block)
        if self.family == "plain":
            return Plain(horizon=H)
        if self.family == "block-bon":
            return BlockBestOfN(horizon=H, actions=act, n=self.n)
        if self.family == "block-rs":
            return BlockRS(horizon=H, actions=act, n=self.n)
        choice = Enumerate() if self.n is None else SelfNormalized(self.n)
        return VGB(horizon=H, choice=choice, drift=1.0)


def methods(quick: bool) -> list[Method]:
    Ls, Ns = ((1, 4), (2, 8)) if quick else (BLOCK_LENGTHS, BLOCK_N)
    out = [Method("plain", "plain")]
    for fam in ("block-bon", "block-rs"):
        out += [Method(fam, f"{fam} L={L} N={n}", L, n) for L in Ls for n in Ns]
    out.append(Method("vgb", "vgb enumerate"))
    out += [Method("vgb", f"vgb K={k}", 1, k) for k in ((4,) if quick else (4, 8))]
    return out


def parse_list(text: str, what: str, cast=int, allowed=None) -> tuple:
    try:
        vals = tuple(cast(x.strip()) for x in str(text).split(",") if x.strip())
    except ValueError as e:
        raise ConfigError(f"--{what}: expected a comma-separated list, got {text!r}") from e
    if not vals:
        raise ConfigError(f"--{what}: empty list")
    if allowed is not None and any(v not in allowed for v in vals):
        raise ConfigError(f"--{what}: {text!r}; choose from {', '.join(map(str, allowed))}")
    if cast is int and any(v < 1 for v in vals):
        raise ConfigError(f"--{what}: values must be >= 1, got {text!r}")
    return vals


# -- one sequence -----------------------------------------------------------------------------


def draw_sequence(
    m: Method,
    lm: DyckTreeLM,
    ver,
    prompt,
    H: int,
    *,
    fixed: int,
    bmax: int,
    max_samples: int,
    seed: int,
    run_cap: int,
    only_fixed: bool = False,
    resume: dict | None = None,
) -> dict:
    """Samples of ``m`` on ``prompt`` until every count overran ``bmax`` (at least ``fixed``);
    one sample is stopped at ``run_cap`` queries / forward tokens or 2 x ``run_cap`` steps.
    ``only_fixed``: stop after the first ``fixed`` samples (the row is marked ``"part"`` when the
    full sequence would go on); ``resume``: go on from such a row (its samples are kept, the
    next sample has the next seed), which gives the row of one uninterrupted sequence."""
    if lm.vocab_size > 10:  # "v" keeps a completion as one digit per token
        raise ValueError(f"a vocabulary of {lm.vocab_size} tokens: rows keep one digit per token")
    base = replace(m.make(H), max_steps=2 * run_cap, max_forward_tokens=run_cap)
    out, seen = [], set()
    costs = {c: [] for c in COUNTS}
    if resume is not None:
        if "v" not in resume:
            raise ValueError("this row keeps no valid completions ('v'): it cannot be resumed")
        out = list(resume["o"])
        costs = {c: list(resume[c[0]]) for c in COUNTS}
        seen = {tuple(int(x) for x in v) for v in resume["v"]}
    valid = [] if resume is None else list(resume["v"])
    used = {c: sum(costs[c]) for c in COUNTS}
    active = {c: not (used[c] > bmax or STOPPED in out) for c in COUNTS}
    i = len(out)

    def more() -> bool:
        return any(active.values()) and i < max_samples

    lm.cap = run_cap
    try:
        while i < fixed or (not only_fixed and more()):
            r = base.sample(lm, ver, prompt=prompt, seed=seed + i)
            cost = {
                "queries": r.stats.forward_tokens,
                "tokens": lm.run_cost,
                "steps": r.stats.steps,
            }
            if r.reached_leaf:
                ok = dyck.is_valid_completion(prompt, r.tokens)
                code = (VALID_AGAIN if r.tokens in seen else VALID_NEW) if ok else INVALID
                if ok and r.tokens not in seen:
                    seen.add(r.tokens)
                    valid.append("".join(str(int(t)) for t in r.tokens))
            else:
                code = STOPPED if r.finish_reason == "budget" else UNFINISHED
            out.append(code)
            for c in COUNTS:
                costs[c].append(cost[c])
                used[c] += cost[c]
                if used[c] > bmax or code == STOPPED:
                    active[c] = False
            i += 1
    finally:
        lm.cap = None
    row = {"o": "".join(out), **{c[0]: costs[c] for c in COUNTS}, "v": valid}
    if only_fixed and more():
        row["part"] = True
    return row


def fixed_outcome(row: dict, n: int) -> tuple[int, int, int]:
    """(samples, valid, distinct valid) of the first ``n`` samples."""
    o = row["o"][:n]
    return len(o), o.count(VALID_NEW) + o.count(VALID_AGAIN), o.count(VALID_NEW)


def budget_outcome(row: dict, count: str, budget: int) -> tuple[int, int, int, str]:
    """(samples, valid, distinct valid, flag) within ``budget`` of ``count``; flag: "" (exact),
    "capped" (the stored samples ran out under budget) or "ambiguous" (a stopped sample)."""
    cs = row[count[0]]
    used = k = valid = new = 0
    for code, c in zip(row["o"], cs):
        if used + c > budget:
            return k, valid, new, ""
        if code == STOPPED:
            return k, valid, new, "ambiguous"
        used += c
        k += 1
        valid += code in (VALID_NEW, VALID_AGAIN)
        new += code == VALID_NEW
    return k, valid, new, "capped"


# -- dominance --------------------------------------------------------------------------------


def dominates(a: dict, b: dict) -> bool:
    """``a`` Pareto-dominates ``b`` in (accuracy, distinct correct): >= in both, > in one. A point
    without samples (accuracy None) dominates nothing and is dominated by any point with a
    distinct correct sample."""
    if a["accuracy"] is None:
        return False
    if b["accuracy"] is None:
        return a["distinct_correct"] > 0
    ge = a["accuracy"] >= b["accuracy"] and a["distinct_correct"] >= b["distinct_correct"]
    gt = a["accuracy"] > b["accuracy"] or a["distinct_correct"] > b["distinct_correct"]
    return ge and gt


def dominated_by(v: dict, baselines: list[dict]) -> list[str]:
    return [b["method"] for b in baselines if dominates(b, v)]


def aggregate(per_prompt: list[tuple[int, int, int]]) -> dict:
    S = sum(p[0] for p in per_prompt)
    return {
        "accuracy": (sum(p[1] for p in per_prompt) / S) if S else None,
        "distinct_correct": float(np.mean([p[2] for p in per_prompt])),
        "samples": S / len(per_prompt),
    }


def verdicts(points: dict[str, list[tuple]], ms: list[Method], rng) -> list[dict]:
    """Per VGB configuration: dominating Block configurations, and the bootstrap share."""
    fam = {m.label: m.family for m in ms}
    n = len(next(iter(points.values())))
    boots = [rng.integers(0, n, n) for _ in range(BOOTSTRAP)]
    full = {k: aggregate(v) | {"method": k} for k, v in points.items()}
    blocks = [full[k] for k in full if fam[k].startswith("block")]
    out = []
    for k in full:
        if fam[k] != "vgb":
            continue
        by = dominated_by(full[k], blocks)
        share = 0
        for idx in boots:
            agg = {j: aggregate([points[j][i] for i in idx]) | {"method": j} for j in points}
            share += bool(dominated_by(agg[k], [agg[j] for j in agg if fam[j].startswith("block")]))
        out.append({"vgb": k, **full[k], "dominated_by": by, "boot_dominated": share / BOOTSTRAP})
    return out


# -- the run ----------------------------------------------------------------------------------


def add_args(p) -> None:
    p.add_argument("--lm", default=str(DEFAULT_LM), help="Dyck LM folder (mlx-lm)")
    p.add_argument("--verifier", default=str(DEFAULT_VERIFIER), help="verifier folder")
    p.add_argument(
        "--prompts",
        type=int,
        default=None,
        help=f"OOD prompts (default {DEFAULT_PROMPTS}; quick 2)",
    )
    p.add_argument(
        "--leaf",
        default="head,exact",
        help="value at leaves, comma-separated: head (the learned head), exact "
        "(the validity check) (default both)",
    )
    p.add_argument(
        "--protocol",
        default="fixed,budget",
        help="fixed (a fixed number of samples per prompt) and/or budget",
    )
    p.add_argument(
        "--budgets",
        default=None,
        help="budgets per prompt and method (default 512,2048,8192; quick 64,256)",
    )
    p.add_argument(
        "--count",
        default=",".join(COUNTS),
        help="how a budget is counted: queries (distinct prefixes whose next-token "
        "distribution was asked), tokens (distinct forward tokens), steps (walk steps)",
    )
    p.add_argument(
        "--fixed-samples",
        type=int,
        default=None,
        help=f"samples per prompt in the fixed protocol (default {DEFAULT_FIXED}; quick 4)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the rows so far (e.g. while a run goes on); draw nothing",
    )
    p.add_argument(
        "--fixed-first",
        action="store_true",
        help="first draw every prompt's first --fixed-samples samples (the fixed protocol's "
        "verdict on all prompts early), then go on with each sequence (the same rows)",
    )
    p.add_argument(
        "--fixed-only",
        action="store_true",
        help="draw only the fixed protocol's samples (as --fixed-first's first phase), report, "
        "and stop; a later run without it finishes the sequences",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="sequences of one prompt drawn at once, their memo misses computed together in "
        "one batched forward (default 0: all of them; 1: one at a time)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help=f"most samples per sequence (default {DEFAULT_MAX_SAMPLES}; quick 16)",
    )


def _settings(args, quick: bool) -> dict:
    leaves = parse_list(args.leaf, "leaf", str, ("head", "exact"))
    protocols = parse_list(args.protocol, "protocol", str, ("fixed", "budget"))
    budgets = parse_list(args.budgets or ("64,256" if quick else "512,2048,8192"), "budgets")
    counts = parse_list(args.count, "count", str, COUNTS)
    fixed = args.fixed_samples or (4 if quick else DEFAULT_FIXED)
    max_samples = args.max_samples or (16 if quick else DEFAULT_MAX_SAMPLES)
    n_prompts = args.prompts or (2 if quick else DEFAULT_PROMPTS)
    if min(fixed, max_samples, n_prompts) < 1:
        raise ConfigError("--prompts, --fixed-samples and --max-samples must be >= 1")
    if getattr(args, "concurrency", 0) < 0:
        raise ConfigError("--concurrency must be >= 0 (0: every sequence of a prompt at once)")
    if max_samples < fixed:
        raise ConfigError(f"--max-samples ({max_samples}) must be >= --fixed-samples ({fixed})")
    return {
        "lm": str(args.lm),
        "verifier": str(args.verifier),
        "prompts": n_prompts,
        "seed": args.seed,
        "fixed_samples": fixed,
        "max_samples": max_samples,
        "max_budget": max(budgets),
        "run_cap": max(max(budgets), RUN_CAP),
        "quick": quick,
        "_leaves": leaves,
        "_protocols": protocols,
        "_budgets": budgets,
        "_counts": counts,
    }


def read_rows(path: Path) -> dict[tuple, dict]:
    """Rows by (leaf, prompt id, method); a line cut off by a kill is dropped."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[(r["leaf"], r["prompt_id"], r["method"])] = r
    return rows


def open_rows(out: Path, settings: dict, write: bool = True) -> tuple[Path, dict]:
    """The rows file and its rows so far; refuses to resume under other settings. ``write``:
    end a line cut off by a kill, so appends stay parseable (not for ``--report-only``, which
    may read while a run appends: its last line may be one being written)."""
    out.mkdir(parents=True, exist_ok=True)
    path, meta = out / "rows.jsonl", out / "rows.meta.json"
    keep = {k: v for k, v in settings.items() if not k.startswith("_")}
    if meta.exists():
        diff = settings_diff(json.loads(meta.read_text()), keep)
        if diff:
            raise ConfigError(
                f"{path} was written with other settings {diff}; use another --out or remove it"
            )
    else:
        atomic_write(meta, json.dumps(keep, indent=1) + "\n")
    rows = read_rows(path)
    if write and path.exists() and path.read_bytes()[-1:] not in (b"", b"\n"):
        with open(path, "a") as f:  # a kill cut the last line: end it so appends stay parseable
            f.write("\n")
    return path, rows


def run(args) -> None:
    from mlx_lm import load

    from ..verifier_format import load_verifier

    t0 = time.perf_counter()
    st = _settings(args, args.quick)
    out = Path(args.out)
    path, rows = open_rows(out, st, write=not getattr(args, "report_only", False))
    ms = methods(args.quick)
    prompts = dyck.make_prompts(
        st["prompts"], EVAL_SEED + args.seed, dyck.OOD_TYPE_PROBS, id_prefix="eval"
    )

    def missing(whole: bool) -> list:  # (leaf, prompt, method) whose row is absent / a part
        return [
            (leaf, p, m)
            for p in prompts
            for leaf in st["_leaves"]
            for m in ms
            if (leaf, p["id"], m.label) not in rows
            or (whole and rows[(leaf, p["id"], m.label)].get("part"))
        ]

    fixed_only = getattr(args, "fixed_only", False)
    if fixed_only and "fixed" not in st["_protocols"]:
        raise ConfigError("--fixed-only needs the fixed protocol (--protocol fixed,...)")
    fixed_first = fixed_only or (
        getattr(args, "fixed_first", False) and "fixed" in st["_protocols"]
    )
    phases = [(missing(False), True)] if fixed_first else []
    if not fixed_only:
        phases.append((missing(True), False))
    todo = phases[-1][0]
    parts = sum(bool(r.get("part")) for r in rows.values())
    print(
        f"[dyck_fig1] {len(todo)} sequences to draw"
        + (" (their fixed-protocol samples only)" if fixed_only else " or finish")
        + f" ({len(rows)} resumed, {parts} of them the first {st['fixed_samples']} samples only)"
        + (
            f"; first the fixed protocol's {len(phases[0][0])}"
            if fixed_first and not fixed_only
            else ""
        ),
        flush=True,
    )
    if todo and not getattr(args, "report_only", False):
        model, _ = load(args.lm)
        _, head, _ = load_verifier(args.verifier)
        lm = DyckTreeLM(model, head)
        conc = getattr(args, "concurrency", 0) or 10**9
        with open(path, "a") as f:
            for phase, (items, only_fixed) in enumerate(phases):
                if phase:
                    items = missing(True)
                by_prompt: dict[str, list] = {}
                for it in items:
                    by_prompt.setdefault(it[1]["id"], []).append(it)
                done = 0
                for group in by_prompt.values():
                    check_drained(len(items) - done, "sequences")  # between prompts (SIGUSR1)
                    p = group[0][1]
                    ids = [dyck.BOS] + dyck.encode(p["prompt"])
                    lm.begin(ids)

                    def job(leaf, p, m, ids=ids, only_fixed=only_fixed, f=f):
                        key = (leaf, p["id"], m.label)
                        eng = current_engine()
                        t = time.perf_counter()
                        view = lm.view()
                        tilt = dyck.completion_tilt if leaf == "exact" else None
                        seq = draw_sequence(
                            m,
                            view,
                            ValueHeadVerifier(view, tilt=tilt),
                            ids,
                            p["max_tokens"],
                            fixed=st["fixed_samples"],
                            bmax=st["max_budget"],
                            max_samples=st["max_samples"],
                            run_cap=st["run_cap"],
                            seed=1_000_003 * args.seed,
                            only_fixed=only_fixed,
                            resume=rows[key] if key in rows else None,
                        )
                        own = eng.job_seconds() if eng else time.perf_counter() - t
                        row = {
                            "leaf": leaf,
                            "prompt_id": p["id"],
                            "method": m.label,
                            "H": p["max_tokens"],
                            **seq,
                            "wall_s": round(own + (rows[key]["wall_s"] if key in rows else 0), 3),
                        }
                        rows[key] = row  # (jobs take turns: one writes at a time)
                        f.write(json.dumps(row, separators=(",", ":")) + "\n")
                        f.flush()

                    jobs = [lambda it=it: job(*it) for it in group]
                    for i in range(0, len(jobs), conc):
                        chunk = jobs[i : i + conc]
                        if len(chunk) == 1:
                            chunk[0]()
                        else:
                            Engine().run(chunk)
                    done += len(group)
                    what = "fixed protocol" if only_fixed else "whole sequences"
                    print(
                        f"[dyck_fig1] {what}: {done}/{len(items)} "
                        f"({time.perf_counter() - t0:.0f}s, {lm.prefixes_stored} prefixes "
                        "stored)",
                        flush=True,
                    )
    from .dyck_fig1_report import report

    report(args, st, ms, prompts, rows, out, time.perf_counter() - t0)
