"""Does a trained verifier make a 0.5B coder better at HumanEval? (#15): pass@1 vs forward tokens.

Generator: Qwen2.5-Coder-0.5B-Instruct with ``mlx_vgb.tasks.code``'s prompt (chat template, the
answer prefilled with the fence and the problem's prompt); a response ends at the closing fence
or EOS; actions are lines. Problems: the report split (task number = 1 mod 4).

Configs (``--configs``, comma-separated), each ``--samples`` responses per problem through the
batched engine (``mlx_vgb.engine``, ``--concurrency`` walks at a time):
- ``plain``: pi_ref (temperature ``--temp``); ``greedy``: temperature 0, one response;
- ``bon-visible``: Best-of-N by the docstring's visible examples, from the pool of plain
  responses (``--pool``, e.g. the report split's rollouts): the expected hidden pass of the
  first visible-passing response among N drawn without replacement, exact over the pool;
- ``action-rs``: ActionLevelRS with the head; ``vgb``: VGB with the head (``--drifts``);
  ``vgb-visible``: VGB with the head inside and the visible examples as tau at the leaves.
  The walks get ``--budgets`` (multiples of plain's mean forward tokens per response on the
  problem, from the pool): a walk that hits its budget returns its best effort, unfinished.

Metrics per config: pass@1 on the hidden tests (the unbiased c/n per problem, mean over
problems, bootstrap 95% interval over problems), pass@k for k = 1..n, distinct correct bodies
per problem, forward tokens and job wall time per response as ratios to plain, backtracks per
response. Rows go to ``rows.jsonl`` as they finish; a rerun resumes. Under ``mlx.launch -n R``
each rank takes every R-th problem and writes ``rows.rank{r}.jsonl``; rank 0 reports
(``mlx_vgb.shards``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from math import comb
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import ConfigError
from ..models import MODEL_HELP
from ..resume import read_kept, write_kept
from ..shards import all_rows_paths, barrier, mine, rows_path, world
from .report import environment, markdown_table

FULL = dict(problems=0, samples=8, horizon=384, candidates=4, concurrency=8)
QUICK = dict(problems=2, samples=2, horizon=24, candidates=2, concurrency=4)
CONFIGS = ("plain", "greedy", "bon-visible", "action-rs", "vgb", "vgb-visible")
BON_NS = (1, 2, 4, 8, 16)


@dataclass
class Row:
    config: str
    task_id: str
    j: int
    seed: int
    body_sha: str
    hidden_pass: bool
    visible_pass: bool
    finish: str
    unfinished: bool
    tokens: int
    forward_tokens: int
    steps: int
    backtracks: int
    wall_s: float


def add_args(p) -> None:
    p.add_argument("--model", default="qwen2.5-coder-0.5b", help=MODEL_HELP)
    p.add_argument("--head", default=None, help="value-head folder trained on the generator")
    p.add_argument("--configs", default="plain,greedy,vgb", help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--drifts", default="0.5", help="VGB lambdas, comma-separated")
    p.add_argument("--budgets", default="4", help="walk budgets, x plain's forward tokens")
    p.add_argument("--pool", default=None, help="rollouts JSONL of plain responses (BoN, costs)")
    p.add_argument("--samples", type=int, default=None, help="responses per problem and config")
    p.add_argument("--problems", type=int, default=None, help="first N report problems (0: all)")
    p.add_argument("--horizon", type=int, default=None, help="max tokens per response")
    p.add_argument("--candidates", type=int, default=None, help="K for the walks")
    p.add_argument("--concurrency", type=int, default=None, help="walks in the engine at once")
    p.add_argument("--temp", type=float, default=0.7, help="pi_ref temperature")
    p.add_argument("--split", default="report", help="problems: report (default) or train")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from rows")
    p.add_argument(
        "--head-eval",
        action="store_true",
        help="also score --head on the --pool rollouts at line starts: AUC and calibration",
    )


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated numbers, got {text!r}") from None


def expand(configs: str, drifts: list[float], budgets: list[float]) -> list[str]:
    """Config names with their settings: ``vgb@d0.5,b4``."""
    out = []
    for c in [c.strip() for c in configs.split(",") if c.strip()]:
        if c not in CONFIGS:
            raise ConfigError(f"unknown config {c!r}; choose from {', '.join(CONFIGS)}")
        if c in ("vgb", "vgb-visible"):
            out += [f"{c}@d{d:g},b{b:g}" for d in drifts for b in budgets]
        elif c == "action-rs":
            out += [f"{c}@b{b:g}" for b in budgets]
        else:
            out.append(c)
    return out


def _parse(config: str) -> tuple[str, dict]:
    name, _, rest = config.partition("@")
    kv = {}
    for part in rest.split(","):
        if part:
            kv[part[0]] = float(part[1:])
    return name, kv


def _order(config: str) -> tuple:
    """Sort key of a config label: by sampler, then drift, then budget as numbers."""
    name, kv = _parse(config)
    return name, kv.get("d", 0.0), kv.get("b", 0.0)


def read_rows(folder: Path) -> dict[tuple, Row]:
    """Every finished row in ``folder`` (the rows files of all ranks)."""
    out = {}
    for path in all_rows_paths(folder, "rows"):
        for line in path.read_text().splitlines():
            try:
                r = Row(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut off by a kill
            out[r.config, r.task_id, r.j] = r
    return out


def read_pool(path: str | None, visible: bool = True) -> dict[str, list[dict]]:
    """Plain responses by task id: hidden pass (the rollout's reward), visible pass (sandboxed;
    only with ``visible``: the report's rank needs it, the others only the costs), tokens."""
    if path is None:
        return {}
    from ..rollouts import read_rollouts
    from ..tasks import code

    pool: dict[str, list[dict]] = {}
    for r in read_rollouts(path):
        p = code.problems()[r.prompt_id]
        pool.setdefault(r.prompt_id, []).append(
            dict(
                hidden=bool(r.reward),
                visible=_visible(p, r.completion) if visible else None,
                tokens=len(r.completion_ids),
                body_sha=_sha(code.fenced_body(r.completion)),
            )
        )
    return pool


_VISIBLE: dict[tuple[str, str], bool] = {}
_VISIBLE_FILE: list[Path] = []  # where verdicts are kept across runs (set by run())


def _load_visible(folder: Path, mine_path: Path) -> None:
    """Visible-example verdicts of earlier runs in this folder, every rank's (task id, body
    sha -> pass); new ones go to this rank's file."""
    _VISIBLE_FILE[:] = [mine_path]
    for path in all_rows_paths(folder, "visible"):
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
                _VISIBLE[d["task_id"], d["body_sha"]] = bool(d["passed"])
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut off by a kill


_EXAMPLES: dict[str, object] = {}


def _visible(problem: dict, completion: str) -> bool:
    """The docstring's visible examples pass against the response (sandboxed; kept in the
    folder's visible files across runs): ``DocstringExamples``' tau on the body."""
    from ..tasks import code
    from ..tasks.humaneval import DocstringExamples

    body = code.fenced_body(completion)
    key = (problem["task_id"], _sha(body))
    if key not in _VISIBLE:
        tid = problem["task_id"]
        if tid not in _EXAMPLES:
            _EXAMPLES[tid] = DocstringExamples(problem["prompt"])
        # DocstringExamples reads SmolLM2's format (the prompt without its final newline, the
        # first body line continuing it): the newline goes in front of the body
        _VISIBLE[key] = bool(_EXAMPLES[tid].tilt_text("\n" + body))
        if _VISIBLE_FILE:
            rec = {"task_id": key[0], "body_sha": key[1], "passed": _VISIBLE[key]}
            with open(_VISIBLE_FILE[0], "a") as f:
                f.write(json.dumps(rec) + "\n")
    return _VISIBLE[key]


def _sha(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def bon_pass(pool: list[dict], n: int) -> float:
    """P(the hidden tests pass) for Best-of-N by visible examples: N responses drawn from the
    pool without replacement, the first visible-passing one kept (none: the first drawn).
    Exact: the first visible pass among N is a uniform visible-passing response."""
    m = len(pool)
    if n > m:
        raise ConfigError(f"Best-of-{n} needs a pool of >= {n} responses, has {m}")
    vis = [r for r in pool if r["visible"]]
    rest = [r for r in pool if not r["visible"]]
    p_none = comb(len(rest), n) / comb(m, n)
    hv = np.mean([r["hidden"] for r in vis]) if vis else 0.0
    hr = np.mean([r["hidden"] for r in rest]) if rest else 0.0
    return float((1 - p_none) * hv + p_none * hr)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021) from c correct of n."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def run(args):
    from .harness import settings

    cfg = settings(
        args, FULL, QUICK, ("problems", "samples", "horizon", "candidates", "concurrency")
    )
    drifts, budgets = _floats(args.drifts, "drifts"), _floats(args.budgets, "budgets")
    configs = expand(args.configs, drifts, budgets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank, size = world()
    _load_visible(out, rows_path(out, "visible", rank, size))
    pool = read_pool(args.pool, visible=rank == 0)
    if not args.report_only:
        _sample(args, cfg, configs, pool, out, rank, size)
    barrier(size)
    if rank != 0:
        return False  # rank 0 writes the report from every rank's rows
    head = head_metrics(args, cfg, cache=out / HEAD_EVAL) if args.head_eval else None
    rows = read_rows(out)
    # every config with rows in this folder is reported (earlier commands' too), and
    # Best-of-N by visible examples whenever there is a pool (it needs no rows of its own)
    core = configs
    configs = configs + sorted({r.config for r in rows.values()} - set(configs), key=_order)
    if pool and "bon-visible" not in configs:
        configs.append("bon-visible")
    write_report(args, cfg, configs, pool, rows, head, core)


def _problem_ids(args, cfg) -> list[str]:
    from ..tasks import code

    ids = code.split_ids(args.split)
    return ids[: cfg["problems"]] if cfg["problems"] else ids


def _sample(args, cfg, configs, pool, out: Path, rank: int, size: int) -> None:
    """Sample this rank's share of the missing rows (problems ``rank::size``)."""
    import mlx.core as mx

    from .. import Lines
    from ..generate import load
    from ..lm import MLXLanguageModel
    from ..model_verifier import ValueHeadVerifier
    from ..registry import HeadSpec, make_sampler
    from ..tasks import code
    from ..vocab import newline_tokens
    from .harness import engine_samples

    needs_head = [c for c in configs if _parse(c)[0] in ("action-rs", "vgb", "vgb-visible")]
    if needs_head and not args.head:
        raise ConfigError(f"{', '.join(needs_head)} need --head (a value-head folder)")
    model, tok = load(args.model)
    base = MLXLanguageModel(model, tok)
    stops = code.stop_tokens(tok)
    eos = base.eos_token_ids | stops
    actions = Lines(newline_tokens(tok, base.vocab_size).line | eos, max_len=48)
    head = HeadSpec(args.head).load_head(model) if needs_head else None
    H = cfg["horizon"]
    problems = code.problems()
    ids = mine(_problem_ids(args, cfg), rank, size)
    done = read_rows(out)
    rows_file = rows_path(out, "rows", rank, size)
    plain_cost = {t: float(np.mean([r["tokens"] for r in pool[t]])) for t in ids if t in pool}

    def job(group: list[str], tid: str, j: int) -> list[Row]:
        """The rows of ``group``'s configs (one config, or one sampler's budgets) for response j
        of ``tid``: a budget sweep runs once at its largest budget and reads the smaller ones
        off that run (``Sampler.sample_budgets``: each is what its own run returns)."""
        config = group[-1]
        name, kv = _parse(config)
        p = problems[tid]
        prompt = list(tok.encode(code.chat_prompt(tok, p)))
        seed = 1_000_003 * args.seed + 1000 * code.task_number(tid) + j
        budget, budgets = None, []
        if "b" in kv:
            cost = plain_cost.get(tid, H / 2)
            budgets = [int(_parse(c)[1]["b"] * cost) + 1 for c in group]
            budget = max(budgets)
        common = dict(max_tokens=H, actions=actions, temp=args.temp)
        if name in ("plain", "greedy"):
            lm = MLXLanguageModel(model, tok, eos_token_ids=eos)
            ver = None
            smp = make_sampler("plain", **dict(common, temp=0.0 if name == "greedy" else args.temp))
        else:
            lm = MLXLanguageModel(model, tok, eos_token_ids=eos, value_head=head)

            def tilt(prompt_ids, response, p=p):
                return float(_visible(p, lm.decode(list(response))))

            ver = ValueHeadVerifier(lm, tilt=tilt if name == "vgb-visible" else None, floor=1e-3)
            smp = make_sampler(
                "action-rs" if name == "action-rs" else "vgb",
                **common,
                candidates=cfg["candidates"],
                drift=kv.get("d"),
                max_forward_tokens=budget,
            )
        t0 = time.perf_counter()
        if len(group) > 1:  # wall: from the run's start to where each budget stopped it
            results = smp.sample_budgets(lm, ver, prompt=prompt, seed=seed, budgets=budgets)
            walls = [r.stats.wall_s for r in results]
        else:
            results = [smp.sample(lm, ver, prompt=prompt, seed=seed)]
            walls = [time.perf_counter() - t0]
        out = []
        for c, r, wall in zip(group, results, walls):
            text = lm.decode([t for t in r.tokens if t not in eos])
            out.append(
                Row(
                    config=c,
                    task_id=tid,
                    j=j,
                    seed=seed,
                    body_sha=_sha(code.fenced_body(text)),
                    hidden_pass=code.passes(p, text),
                    visible_pass=_visible(p, text),
                    finish=r.finish_reason,
                    unfinished=not r.reached_leaf,
                    tokens=len(r.tokens),
                    forward_tokens=r.stats.forward_tokens,
                    steps=r.stats.steps,
                    backtracks=r.stats.backtracks,
                    wall_s=wall,
                )
            )
        return out

    # problem-major: a run stopped part-way has every config's rows on the same problems
    todo = [
        (config, t, j)
        for t in ids
        for config in configs
        if _parse(config)[0] != "bon-visible"  # from the pool
        for j in range(_needed(config, cfg["samples"]))
        if (config, t, j) not in done
    ]
    if not todo:
        return
    todo = budget_groups(todo)
    who = f" (rank {rank} of {size})" if size > 1 else ""
    n = sum(len(g) for g, _, _ in todo)
    print(
        f"[code] {n} responses to sample{who} in {len(todo)} runs ({len(done)} resumed)",
        flush=True,
    )
    with open(rows_file, "a") as f:

        def write(i: int, rows: list[Row]) -> None:
            for row in rows:
                f.write(json.dumps(asdict(row)) + "\n")
                f.flush()
                print(
                    f"[code] {row.config} {row.task_id}#{row.j}: hidden={row.hidden_pass} "
                    f"visible={row.visible_pass} fwd={row.forward_tokens} "
                    f"bt={row.backtracks} {row.finish} {row.wall_s:.0f}s (device memory "
                    f"{mx.get_active_memory() / 2**30:.1f} GiB)",
                    flush=True,
                )

        engine_samples(
            [lambda key=key: job(*key) for key in todo], cfg["concurrency"], on_done=write
        )


def budget_groups(todo: list[tuple[str, str, int]]) -> list[tuple[list[str], str, int]]:
    """Missing rows (config, problem, j) -> runs (configs, problem, j): the configs of one
    sampler and drift that differ only in their budget share a run (sorted by budget, the
    largest last), every other row is a run of its own; in the order of ``todo``."""
    groups: dict[tuple, list[str]] = {}
    for config, t, j in todo:
        name, kv = _parse(config)
        rest = tuple(sorted((k, v) for k, v in kv.items() if k != "b"))
        key = (name, rest, t, j) if "b" in kv else (config, (), t, j)
        groups.setdefault(key, []).append(config)
    return [
        (sorted(cs, key=lambda c: _parse(c)[1].get("b", 0.0)), k[2], k[3])
        for k, cs in groups.items()
    ]


HEAD_EVAL = "head_eval.json"  # head_metrics' result, kept with what it was computed from
# the version of _head_metrics' computation: raise it when what it computes changes, so kept
# metrics of the old code are recomputed
HEAD_METRICS_VERSION = 1


def _files_digest(paths) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in paths):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def head_eval_key(args, cfg) -> dict:
    """What the head metrics depend on: the model, the head's files, the pool's bytes, the
    problems and the metrics code's version (so a rerun of the same command reuses them, and
    any change recomputes them)."""
    head = Path(args.head)
    if not head.exists() or not Path(args.pool).is_file():
        missing = args.head if not head.exists() else args.pool
        raise ConfigError(f"--head-eval: {missing} does not exist; give the head folder and pool")
    files = [f for f in head.rglob("*") if f.is_file()] if head.is_dir() else [head]
    return {
        "model": str(args.model),
        "head": str(args.head),
        "head_sha256": _files_digest(files),
        "pool_sha256": _files_digest([args.pool]),
        "problems": _problem_ids(args, cfg),
        "metrics_version": HEAD_METRICS_VERSION,
    }


def head_metrics(args, cfg, cache: Path | None = None) -> dict:
    """The head as a predictor of success on the pool's rollouts (the report split: problems
    the head never saw), at every line start and at the leaves: AUC, Brier, calibration.
    With ``cache``: reused from that file when it was computed from the same model, head files,
    pool and problems (one forward over every rollout: ~30 minutes of the 0.5B here), else
    computed and written there."""
    if not (args.head and args.pool):
        raise ConfigError("--head-eval needs --head and --pool (rollouts of the report split)")
    key = head_eval_key(args, cfg)
    kept = read_kept(cache, key)
    if kept is not None:
        return kept["metrics"]
    metrics = _head_metrics(args, cfg)
    if cache is not None:
        write_kept(cache, key, {"metrics": metrics}, indent=1)
    return metrics


def _head_metrics(args, cfg) -> dict:
    from ..generate import load
    from ..registry import HeadSpec
    from ..rollouts import read_rollouts
    from ..value_training import evaluate, predict_values, target_features, value_targets
    from ..vocab import newline_tokens, vocab_size_of

    if not (args.head and args.pool):
        raise ConfigError("--head-eval needs --head and --pool (rollouts of the report split)")
    from ..verifier_format import load_verifier

    model, tok = load(args.model)
    _, own_head, backbone = load_verifier(args.head)
    if backbone is None:
        head = HeadSpec(args.head).load_head(model)
    else:  # a verifier of its own (e.g. train-verifier --finetune-layers): its states
        from mlx_lm import load as mlx_load

        head, (model, _) = own_head, mlx_load(str(backbone))
    wanted = set(_problem_ids(args, cfg))
    rollouts = [r for r in read_rollouts(args.pool) if r.prompt_id in wanted]
    if not rollouts:
        raise ConfigError(f"{args.pool} holds no rollouts of these problems")
    targets = value_targets(rollouts, boundaries=newline_tokens(tok, vocab_size_of(tok)).line)
    feats = target_features(model, rollouts, targets, pad_id=tok.pad_token_id or 0)
    m = evaluate(predict_values(head, feats), targets)
    return dict(m.as_dict(), table=m.calibration_table(), rollouts=len(rollouts))


def _bootstrap(per_problem: np.ndarray, seed: int = 0, reps: int = 10_000) -> tuple[float, float]:
    if len(per_problem) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_problem), (reps, len(per_problem)))
    means = per_problem[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _outcome_metrics(outcomes: dict[str, list[tuple[bool, str]]], ks) -> dict:
    """pass@1 (mean over problems of c/n, bootstrap interval), distinct correct bodies and
    pass@k from each problem's n (hidden pass, body sha) pairs."""
    n = min(len(v) for v in outcomes.values())
    per = np.array([np.mean([h for h, _ in v]) for v in outcomes.values()])
    lo, hi = _bootstrap(per)
    correct = [sum(h for h, _ in v) for v in outcomes.values()]
    return dict(
        problems=len(outcomes),
        n=n,
        pass1=float(per.mean()),
        lo=lo,
        hi=hi,
        per_problem={t: float(x) for t, x in zip(outcomes, per)},
        distinct_correct=float(np.mean([len({b for h, b in v if h}) for v in outcomes.values()])),
        pass_at_k={k: float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in ks},
    )


def _needed(config: str, samples: int) -> int:
    return 1 if config == "greedy" else samples


def common_problems(core, rows: dict, ids: list[str], samples: int) -> list[str]:
    """The problems on which every sampled config of ``core`` (this command's) that has rows
    has all its responses: the table compares configs on the same problems, so a run stopped
    part-way reports a smaller set, not each config over its own."""
    count: dict[tuple[str, str], int] = {}
    for r in rows.values():
        count[r.config, r.task_id] = count.get((r.config, r.task_id), 0) + 1
    sampled = [c for c in core if any(k[0] == c for k in count)]
    return [t for t in ids if all(count.get((c, t), 0) >= _needed(c, samples) for c in sampled)]


def summarize(configs, pool, rows: dict, ids: list[str], samples: int | None = None) -> list[dict]:
    """One line per config over the problems ``ids`` (bon-visible: the pool); with
    ``samples``, a config missing responses on some of them is reported over those it has
    all of (its ``problems`` column says how many)."""
    by: dict[str, dict[str, list[Row]]] = {}
    for r in rows.values():
        by.setdefault(r.config, {}).setdefault(r.task_id, []).append(r)
    if samples is not None:
        by = {
            c: {t: rs for t, rs in got.items() if len(rs) >= _needed(c, samples)}
            for c, got in by.items()
        }
    plain_rows = [r for t in ids for r in by.get("plain", {}).get(t, [])]
    plain_fwd = np.mean([r.forward_tokens for r in plain_rows]) if plain_rows else None
    plain_wall = np.mean([r.wall_s for r in plain_rows]) if plain_rows else None
    if plain_fwd is None and pool:
        plain_fwd = np.mean([x["tokens"] for t in ids for x in pool.get(t, [])])
    out = []
    for config in configs:
        if config == "bon-visible":
            for n in BON_NS:
                tids = [t for t in ids if len(pool.get(t, [])) >= n]
                if not tids:
                    continue
                per = np.array([bon_pass(pool[t], n) for t in tids])
                fwd = n * np.mean([x["tokens"] for t in tids for x in pool[t]])
                lo, hi = _bootstrap(per)
                out.append(
                    dict(
                        config=f"bon-visible@n{n}",
                        problems=len(tids),
                        n=n,
                        pass1=float(per.mean()),
                        lo=lo,
                        hi=hi,
                        per_problem={t: float(x) for t, x in zip(tids, per)},
                        fwd_ratio=float(fwd / plain_fwd) if plain_fwd else None,
                    )
                )
            continue
        got = by.get(config, {})
        tids = [t for t in ids if t in got]
        if not tids:
            continue
        n = min(len(got[t]) for t in tids)
        flat = [r for t in tids for r in got[t][:n]]
        fwd = np.mean([r.forward_tokens for r in flat])
        wall = np.mean([r.wall_s for r in flat])
        outcomes = {t: [(r.hidden_pass, r.body_sha) for r in got[t][:n]] for t in tids}
        out.append(
            dict(
                config=config,
                **_outcome_metrics(outcomes, range(1, n + 1)),
                fwd_ratio=float(fwd / plain_fwd) if plain_fwd else None,
                wall_ratio=float(wall / plain_wall) if plain_wall else None,
                backtracks=float(np.mean([r.backtracks for r in flat])),
                unfinished=float(np.mean([r.unfinished for r in flat])),
            )
        )
    if pool:  # the pool itself: plain responses, pass@k from all of them
        tids = [t for t in ids if t in pool]
        n = min(len(pool[t]) for t in tids)
        tokens = np.mean([x["tokens"] for t in tids for x in pool[t]])
        outcomes = {t: [(x["hidden"], x["body_sha"]) for x in pool[t][:n]] for t in tids}
        out.append(
            dict(
                config="plain (pool)",
                **_outcome_metrics(outcomes, [k for k in (1, 2, 4, 8, 16) if k <= n]),
                fwd_ratio=float(tokens / plain_fwd) if plain_fwd else None,
            )
        )
    return out


GOAL_LIFT, GOAL_COST = 0.10, 4.0  # the goal: >= 10 points over plain at <= 4x its tokens


def add_lifts(lines: list[dict]) -> None:
    """Each line's pass@1 minus plain's, paired over the problems both have (the per-problem
    differences resampled together: a bootstrap 95% interval over problems), in place."""
    plain = next((x for x in lines if x["config"] == "plain"), None)
    if plain is None:
        return
    for x in lines:
        if x is plain or "per_problem" not in x:
            continue
        both = [t for t in x["per_problem"] if t in plain["per_problem"]]
        d = np.array([x["per_problem"][t] - plain["per_problem"][t] for t in both])
        if not len(d):
            continue
        x["lift"] = float(d.mean())
        x["lift_lo"], x["lift_hi"] = _bootstrap(d)


def own_problem_lines(lines: list[dict], pool, rows: dict, ids: list[str], samples) -> list[dict]:
    """Lines of configs that have all their responses on fewer of ``ids`` (a sweep still
    running) redone against plain and Best-of-N on their own problems: their forward-token and
    wall ratios are to plain's on those problems, and ``bon`` (Best-of-N's (ratio, pass@1) at
    each n on them) is what the goal lines compare them with. Such a line is ``partial``."""
    out = []
    for x in lines:
        own = [t for t in ids if t in x.get("per_problem", {})]
        if x["config"].startswith(("bon-visible@", "plain")) or len(own) == len(ids) or not own:
            out.append(x)
            continue
        sub = summarize(["plain", "bon-visible", x["config"]], pool, rows, own, samples)
        y = next(z for z in sub if z["config"] == x["config"])
        y["partial"] = True
        y["bon"] = [
            (z["fwd_ratio"], z["pass1"])
            for z in sub
            if z["config"].startswith("bon-visible@") and z.get("fwd_ratio")
        ]
        out.append(y)
    return out


def bon_tokens_for(
    lines: list[dict], target: float, pts: list | None = None
) -> tuple[float | None, str]:
    """Forward tokens (ratio to plain) at which Best-of-N by visible examples reaches pass@1
    ``target``: linear in pass@1 between its measured n on a log2 token axis. (ratio, how):
    how is "at" (interpolated), "below" (its n = 1 already reaches it: <= the ratio) or
    "never" (not within its largest n: ratio is that n's, a lower bound). ``pts``: Best-of-N's
    (ratio, pass@1) points to use instead of the bon-visible lines (a partial line's own)."""
    if pts is None:
        pts = [
            (x["fwd_ratio"], x["pass1"])
            for x in lines
            if x["config"].startswith("bon-visible@") and x.get("fwd_ratio")
        ]
    pts = sorted(pts)
    if not pts:
        return None, "never"
    if target <= pts[0][1]:
        return pts[0][0], "below"
    for (f0, p0), (f1, p1) in zip(pts, pts[1:]):
        if p0 < target <= p1:
            w = (target - p0) / (p1 - p0)
            return float(2 ** ((1 - w) * np.log2(f0) + w * np.log2(f1))), "at"
    return pts[-1][0], "never"


def goal_lines(lines: list[dict]) -> list[str]:
    """The issue's goal, stated per VGB config from the numbers: a lift of >= 10 points over
    plain at <= 4x plain's forward tokens (met: the paired interval is above 10 points; not met:
    below; else open), and fewer forward tokens than Best-of-N by visible examples for the same
    pass@1 (point estimates)."""
    out = []
    for x in lines:
        if not x["config"].startswith("vgb") or "lift" not in x:
            continue
        f, lift, lo, hi = x.get("fwd_ratio"), x["lift"], x["lift_lo"], x["lift_hi"]
        cost = f"{f:.2f}x" if f is not None else "?"
        if f is not None and f > GOAL_COST:
            v = f"not applicable: it costs {cost}, more than {GOAL_COST:g}x plain's forward tokens"
        elif np.isnan(lo):
            v = "too few problems for an interval"
        elif lo >= GOAL_LIFT:
            v = f"**met** (the interval is above {100 * GOAL_LIFT:.0f} points)"
        elif hi < GOAL_LIFT:
            v = f"**not met** (the interval excludes a {100 * GOAL_LIFT:.0f}-point lift)"
        else:
            v = f"open (the interval contains {100 * GOAL_LIFT:.0f} points)"
        b, how = bon_tokens_for(lines, x["pass1"], x.get("bon"))
        if b is None:
            bon = "no Best-of-N line to compare"
        elif how == "below":
            bon = f"Best-of-N by visible examples reaches its pass@1 at n = 1 ({b:.2f}x or less)"
        elif how == "never":
            bon = f"Best-of-N by visible examples does not reach its pass@1 by its largest n ({b:.2f}x)"
        else:
            bon = f"Best-of-N by visible examples reaches its pass@1 at {b:.2f}x"
        fewer = f is not None and b is not None and (how == "never" or f < b) and how != "below"
        where = f" (on its {x['problems']} problems)" if x.get("partial") else ""
        out.append(
            f"- `{x['config']}`{where}: pass@1 {x['pass1']:.3f} at {cost} plain's forward tokens, "
            f"lift over plain {100 * lift:+.1f} points (95% CI {100 * lo:+.1f} to "
            f"{100 * hi:+.1f}): goal {v}. {bon}: VGB uses "
            f"{'fewer' if fewer else 'no fewer'} forward tokens for it."
        )
    return out


def passk_table(lines: list[dict], kmax: int = 8) -> str:
    ks = list(range(1, kmax + 1))
    rows = [x for x in lines if x.get("pass_at_k")]
    cols = ["config"] + [f"k={k}" for k in ks]
    return markdown_table(
        [
            dict(
                zip(
                    cols,
                    [x["config"]] + [_fmt(x["pass_at_k"].get(k)) for k in ks],
                )
            )
            for x in rows
        ],
        cols,
    )


def _fmt(x, spec=".3f"):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _lift_cell(x: dict) -> str:
    """'+6.1 (+0.9 to +11.3)': the line's lift over plain in points, with its paired interval."""
    if x.get("lift") is None:
        return ""
    pts = [100 * x[k] for k in ("lift", "lift_lo", "lift_hi")]
    return f"{pts[0]:+.1f} ({pts[1]:+.1f} to {pts[2]:+.1f})"


def write_report(
    args, cfg, configs, pool, rows, head: dict | None = None, core: list[str] | None = None
) -> None:
    all_ids = _problem_ids(args, cfg)
    ids = common_problems(core or configs, rows, all_ids, cfg["samples"])
    lines = own_problem_lines(
        summarize(configs, pool, rows, ids, cfg["samples"]), pool, rows, ids, cfg["samples"]
    )
    add_lifts(lines)
    cols = [
        "config",
        "problems",
        "n",
        "pass@1",
        "95% CI",
        "lift over plain (paired 95% CI)",
        "fwd tokens / plain",
        "wall / plain",
        "backtracks",
        "unfinished",
        "distinct correct",
    ]
    table = markdown_table(
        [
            dict(
                zip(
                    cols,
                    [
                        x["config"],
                        x["problems"],
                        x["n"],
                        _fmt(x["pass1"]),
                        f"{_fmt(x['lo'])}-{_fmt(x['hi'])}",
                        _lift_cell(x),
                        _fmt(x.get("fwd_ratio"), ".2f"),
                        _fmt(x.get("wall_ratio"), ".2f"),
                        _fmt(x.get("backtracks"), ".1f"),
                        _fmt(x.get("unfinished"), ".2f"),
                        _fmt(x.get("distinct_correct"), ".2f"),
                    ],
                )
            )
            for x in lines
        ],
        cols,
    )
    out = Path(args.out)
    md = [
        "# HumanEval report split: does VGB make the 0.5B coder better?",
        "",
        f"Command: `{args.command}`",
        f"Date: {time.strftime('%Y-%m-%d')}",
        "",
        f"Over {len(ids)} of {len(all_ids)} problems: those on which every config of the "
        "command has all its responses"
        + ("." if len(ids) == len(all_ids) else " (UNFINISHED: rerun the command to continue)."),
        "",
        table,
        "",
        *(
            [
                "Configs over fewer problems (a sweep still running) are compared with plain "
                "and Best-of-N on their own problems: their forward-token and wall ratios, lift "
                "and Best-of-N comparison use those problems only, and their pass@1 is not "
                "comparable with the full rows' ("
                + ", ".join(f"`{x['config']}`: {x['problems']}" for x in lines if x.get("partial"))
                + ").",
                "",
            ]
            if any(x.get("partial") for x in lines)
            else []
        ),
        f"## The goal: >= {100 * GOAL_LIFT:.0f} points over plain at <= {GOAL_COST:g}x its "
        "forward tokens, and fewer tokens than Best-of-N",
        "",
        "Lift: pass@1 minus plain's, paired over the problems (bootstrap 95% interval over "
        "problems). Best-of-N's tokens for a pass@1: interpolated between its measured n on a "
        "log token axis (point estimates).",
        "",
        *(goal_lines(lines) or ["- no VGB config with plain beside it"]),
        "",
        "## pass@k (unbiased, from each problem's n responses)",
        "",
        passk_table(lines),
        "",
    ]
    if head is not None:
        md += [
            f"## The head on the pool's rollouts ({head['rollouts']} rollouts, "
            f"{head['n_prefixes']} prefixes at line starts and leaves)",
            "",
            f"AUC {_fmt(head['auc'])} (within a problem: {_fmt(head.get('within_auc'))}), "
            f"Brier {head['brier']:.4f}, "
            f"success rate {head['base_rate']:.3f}",
            "",
            head["table"],
            "",
        ]
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    atomic_write(
        out / "results.json",
        json.dumps(
            {
                "command": args.command,
                "config": cfg,
                "configs": configs,
                "problems": ids,
                "unfinished": len(ids) < len(all_ids),
                "summary": lines,
                "head": {k: v for k, v in head.items() if k != "table"} if head else None,
                "environment": environment(),
            },
            indent=1,
        )
        + "\n",
    )
    _plot(out / "pass1_vs_tokens.png", lines)
    print(table)


def plot_families(lines: list[dict]) -> dict[str, list[dict]]:
    """The plot's curves: the lines of one sampler and drift (a budget sweep; Best-of-N's n),
    sorted by forward tokens; a line on fewer problems (a run in progress) is a curve of its
    own, drawn once it has half the problems (the table lists it from the first)."""
    most = max((x.get("problems") or 0 for x in lines), default=0)
    families: dict[str, list[dict]] = {}
    for x in lines:
        if x.get("fwd_ratio") is None:
            continue
        name, kv = _parse(x["config"].split(" ")[0])
        fam = name + (f", drift {kv['d']:g}" if "d" in kv else "")
        if x.get("partial"):  # not on the full rows' problems: a line of its own
            if 2 * x["problems"] < most:
                continue
            fam = f"{fam} ({x['problems']} problems)"
        families.setdefault(fam, []).append(x)
    return {f: sorted(xs, key=lambda x: x["fwd_ratio"]) for f, xs in families.items()}


def _plot(path: Path, lines: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - the bench extra is missing
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam, xs in plot_families(lines).items():
        ax.errorbar(
            [x["fwd_ratio"] for x in xs],
            [x["pass1"] for x in xs],
            yerr=[
                [max(0.0, x["pass1"] - x["lo"]) if not np.isnan(x["lo"]) else 0 for x in xs],
                [max(0.0, x["hi"] - x["pass1"]) if not np.isnan(x["hi"]) else 0 for x in xs],
            ],
            marker="o",
            capsize=3,
            label=fam,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("forward tokens per response / plain's")
    ax.set_ylabel("pass@1 (hidden tests)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
