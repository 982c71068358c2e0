"""Test-case writing as the paper measured it (#16 part 4): whose law of the tests is closer to pi*?

Task: ``mlx_vgb.tasks.testcase_law`` (Qwen2.5-Coder-0.5B-Instruct's chat template, one
demonstration, then "List N test cases of the above function NAME" for a small list function;
lines as actions; a response ends at the closing fence or EOS; tau = every line a passing
assert, checked in the sandbox). Eval prompts: ``--problems`` of the eval split (names disjoint
from the training prompts of ``--write-prompts``).

Pool (``pool.jsonl``): plain responses of pi_ref per prompt, batched ancestral sampling
(``rollouts.sample_batch``; row k of a prompt draws with ``rollout_rng(seed, id, k)``, so a
rerun resumes and the result does not depend on batching). Rows k < ``--samples`` are the
``plain`` config; the rest are the pi* proposals: pi* = pi_ref(. | tau = 1) by rejection, the
accepted rows (tau = 1). The pool grows per prompt until it holds ceil(``--min-accepted`` /
problems) accepted rows (at most ``--max-pool`` rows per prompt).

Configs (``--configs``), ``--samples`` responses per prompt through the batched engine
(``--concurrency`` walks at a time), rows in ``rows.jsonl`` (a rerun resumes): ``plain``;
``action-rs`` (ActionLevelRS); ``vgb@dL`` (VGB, lambda = L, every leaf padded to D line
actions, ``--max-actions``, default 2N + 2, beyond which tau = 0: the exact walk, see
``tasks.testcase_law``); ``vgb-nopad@dL`` (the same walk with shallow leaves as leaves). The walks take V^ from
the value head (``--head``, trained by ``mlx-vgb train-verifier --reward testcase_law`` on the
training prompts), tau at the leaves is the exact check, and the child step is the exact
rejection step (``Rejection(K)``, ``--candidates``; a step that falls back to the biased
K-candidate rule is counted in ``inexact_steps``). A walk gets at most ``--budget`` x plain's
mean tokens on the prompt as forward tokens; one that runs out is unfinished.

Metrics per config: the law of the number of asserts per response and the law of the list
lengths ``len(l)`` over the parsed tests, on the finished responses, each a mixture with equal
weight per prompt (pi* likewise, from its accepted rows); TV and KL(pi* || config) to pi*, the
config's counts smoothed by adding 1/2 to every value of the common support (Jeffreys) so that
KL stays finite; 95% bootstrap intervals (responses resampled within each prompt, the config's
and pi*'s); the noise floor (the TV an exact sampler with the same numbers of responses would
show: both sides drawn from the pi* rows); the share of bootstrap resamples in which VGB is
closer than ActionLevelRS; distinct passing tests and test types per response
(``testcase_law.analyse``), correct rate, forward tokens (and the ratio to plain's tokens),
backtracks, wall time (a walk's own time in the batched engine, ``Engine.job_seconds``).
``--calibrate`` measures plain's success rate for several N instead.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import ConfigError
from ..models import MODEL_HELP
from ..resume import settings_diff

FULL = dict(
    problems=8,
    samples=8,
    n_tests=5,  # plain's success 0.22 (calibration.md)
    horizon=192,
    # K = 1 proposal per rejection round (as results/code/bench.sh): the exact step's draws are
    # i.i.d., K only sets how many are drawn at once, and every one past the accepted one is
    # wasted forward tokens; the engine batches across walks instead
    candidates=1,
    concurrency=32,
    min_accepted=200,
    max_pool=400,
    budget=100.0,
    batch_size=64,
    max_actions=0,
)
QUICK = dict(
    problems=2,
    samples=2,
    n_tests=2,
    horizon=24,
    candidates=2,
    concurrency=4,
    min_accepted=4,
    max_pool=8,
    budget=8.0,
    batch_size=16,
    max_actions=0,
)
SIZES = tuple(FULL)
FUNCTION_NAMES = ("append", "prepend", "remove", "count")  # mlx_vgb.tasks.testcase_law.FUNCTIONS
DEFAULT_FUNCTIONS = "append,prepend"
CONFIGS = ("plain", "action-rs", "vgb", "vgb-nopad")
DEFAULT_CONFIGS = "plain,action-rs,vgb@d1"
FLOOR = 1e-3  # V^ from the head is clipped below at this
LINE_MAX_TOKENS = 48  # a line action ends at a newline or after this many tokens
BOOTSTRAP = 1000
# the settings a resumed pool / rows file must share with the run that started it
POOL_KEYS = ("model", "n_tests", "horizon", "temp", "seed", "tau_mode", "functions", "max_actions")
ROWS_KEYS = POOL_KEYS + ("candidates", "budget", "head")


def add_args(p) -> None:
    p.add_argument("--model", default="qwen2.5-coder-0.5b", help=MODEL_HELP)
    p.add_argument("--head", default=None, help="value-head folder trained on the generator")
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"comma-separated, of {', '.join(CONFIGS)}; vgb and vgb-nopad take @dLAMBDA "
        f"(default {DEFAULT_CONFIGS})",
    )
    p.add_argument("--problems", type=int, default=None, help="eval prompts")
    p.add_argument("--samples", type=int, default=None, help="responses per prompt and config")
    p.add_argument("--n-tests", type=int, default=None, help="N, the test cases asked for")
    p.add_argument(
        "--functions",
        default=None,
        help=f"comma-separated, of {', '.join(FUNCTION_NAMES)} (default {DEFAULT_FUNCTIONS}: "
        "plain's success was 0-6%% for remove and count at N = 4, see calibration.md)",
    )
    p.add_argument("--tau", default="all", choices=("all", "exactly-n"), help="tau mode")
    p.add_argument("--horizon", type=int, default=None, help="max tokens per response")
    p.add_argument("--temp", type=float, default=1.0, help="pi_ref temperature")
    p.add_argument("--candidates", type=int, default=None, help="K of the rejection step")
    p.add_argument("--concurrency", type=int, default=None, help="walks in the engine at once")
    p.add_argument("--budget", type=float, default=None, help="walk forward tokens, x plain's")
    p.add_argument(
        "--min-accepted", type=int, default=None, help="pi* rows accepted, over all prompts"
    )
    p.add_argument("--max-pool", type=int, default=None, help="pool rows per prompt at most")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batched pool forward")
    p.add_argument(
        "--max-actions",
        type=int,
        default=None,
        help="D: tau = 0 beyond D line actions, the walks pad to D (0: 2N + 2)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from rows")
    p.add_argument(
        "--write-prompts",
        type=Path,
        default=None,
        metavar="JSONL",
        help="write --count training prompts for train-verifier and exit",
    )
    p.add_argument("--count", type=int, default=96, help="with --write-prompts: prompts")
    p.add_argument(
        "--calibrate",
        default=None,
        metavar="N1,N2,...",
        help="plain's success rate for these N (--problems prompts of the calibration set, "
        "--samples each, one batch per N) into calibration.md / .json, and exit",
    )


# -- settings ----------------------------------------------------------------------------------


def sizes(args) -> dict:
    from .harness import settings

    cfg = settings(args, FULL, QUICK, SIZES)
    from ..tasks.testcase_law import default_max_actions

    fns = args.functions or DEFAULT_FUNCTIONS
    cfg.update(
        model=args.model,
        temp=args.temp,
        tau_mode=args.tau,
        functions=[f.strip() for f in fns.split(",") if f.strip()],
        head=str(args.head) if args.head else None,
    )
    for k in ("problems", "samples", "n_tests", "horizon", "candidates", "concurrency"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be an integer >= 1, got {cfg[k]!r}")
    if cfg["min_accepted"] < 1 or cfg["max_pool"] < cfg["samples"] + 1:
        raise ConfigError("need --min-accepted >= 1 and --max-pool > --samples")
    if not cfg["budget"] > 0 or not cfg["temp"] > 0:
        raise ConfigError("--budget and --temp must be > 0")
    if cfg["max_actions"] < 0:
        raise ConfigError("--max-actions must be >= 1 (or 0: 2N + 2)")
    cfg["max_actions"] = cfg["max_actions"] or default_max_actions(cfg["n_tests"])
    return cfg


def parse_configs(text: str) -> list[tuple[str, str, float | None]]:
    """(config label, sampler kind, lambda) for each ``--configs`` entry."""
    out = []
    for c in [c.strip() for c in text.split(",") if c.strip()]:
        kind, _, rest = c.partition("@")
        if kind not in CONFIGS:
            raise ConfigError(f"unknown config {c!r}; choose from {', '.join(CONFIGS)}")
        drift = None
        if kind.startswith("vgb"):
            if not rest.startswith("d"):
                raise ConfigError(f"{c!r}: give VGB's lambda as {kind}@dLAMBDA, e.g. {kind}@d1")
            try:
                drift = float(rest[1:])
            except ValueError:
                raise ConfigError(f"{c!r}: lambda must be a number, e.g. {kind}@d1") from None
            if not 0 < drift <= 1:
                raise ConfigError(f"{c!r}: lambda must be in (0, 1]")
            c = f"{kind}@d{drift:g}"
        elif rest:
            raise ConfigError(f"{c!r}: only vgb and vgb-nopad take @dLAMBDA")
        out.append((c, kind, drift))
    if not out:
        raise ConfigError("--configs is empty")
    return out


def _check_meta(path: Path, cfg: dict, keys) -> None:
    """Refuse to extend ``path`` (a pool or rows file) made with other settings."""
    meta = path.with_name(path.name + ".meta.json")
    want = {k: cfg[k] for k in keys}
    if path.exists() and meta.exists():
        diff = settings_diff(json.loads(meta.read_text()), want, keys)
        if diff:
            raise ConfigError(
                f"{path} was made with other settings (then, now): {diff}; use the same "
                "settings or another --out folder"
            )
    atomic_write(meta, json.dumps(want, indent=1) + "\n")


# -- rows --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One response: a pool row (config ``pool``, k = its index) or a sampled config's."""

    config: str
    prompt_id: str
    j: int
    seed: int
    text: str
    finished: bool  # reached a leaf (a pool row always does)
    finish: str
    tau: float
    lines: int
    asserts: int
    passed: int
    list_lengths: list[int]
    distinct_tests: int
    distinct_types: int
    tests: list[str]
    types: list[str]
    tokens: int
    forward_tokens: int
    steps: int = 0
    backtracks: int = 0
    inexact_steps: int = 0
    wall_s: float = 0.0


def read_rows(path: Path) -> list[Row]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(Row(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut off by a kill
    return out


def _append(path: Path, rows: list[Row]) -> None:
    import os

    with open(path, "a") as f:
        f.write("".join(json.dumps(asdict(r)) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _row(s, config, problem, j, seed, toks, finished, finish, cfg, **stats) -> Row:
    """The row of a response's tokens (analysed; tau with the tree's count of actions)."""
    text, _ = _decode(s, toks)
    a = _analyse(s, problem, toks, cfg)
    return Row(
        config=config,
        prompt_id=problem.id,
        j=j,
        seed=seed,
        text=text,
        finished=finished,
        finish=finish,
        tau=a.tau,
        lines=a.lines,
        asserts=a.asserts,
        passed=a.passed,
        list_lengths=a.list_lengths,
        distinct_tests=a.distinct_tests,
        distinct_types=a.distinct_types,
        tests=a.tests,
        types=a.types,
        tokens=len(toks),
        forward_tokens=stats.pop("forward_tokens", len(toks)),
        **stats,
    )


def _analyse(s, problem, toks, cfg):
    from ..tasks.testcase_law import analyse, line_actions

    text, stop = _decode(s, toks)
    return analyse(
        text,
        problem.name,
        problem.reference,
        problem.n_tests,
        stop,
        cfg["tau_mode"],
        actions=line_actions(toks, s.actions),
        max_actions=cfg["max_actions"],
    )


# -- the model side ----------------------------------------------------------------------------


@dataclass
class Setup:
    model: object
    tok: object
    eos: frozenset  # EOS and the fence tokens: a response ends there
    actions: object  # CappedLines: line actions, the walks pad to D
    problems: list
    prompts: dict = field(default_factory=dict)  # problem id -> prompt token ids


def setup(cfg: dict, split: str = "eval", seed: int | None = None) -> Setup:
    from ..generate import load
    from ..tasks import testcase_law as task
    from ..vocab import newline_tokens, tokens_containing, vocab_size_of

    model, tok = load(cfg["model"])
    eos = set(getattr(tok, "eos_token_ids", None) or [tok.eos_token_id])
    eos |= tokens_containing(tok, task.FENCE)
    vocab = max(vocab_size_of(tok), int(model.args.vocab_size))
    lines = newline_tokens(tok, vocab).line | eos
    actions = task.CappedLines(lines, max_len=LINE_MAX_TOKENS, depth=cfg["max_actions"])
    probs = task.make_problems(
        split,
        cfg["problems"],
        cfg["n_tests"],
        cfg["functions"],
        cfg["seed"] if seed is None else seed,
    )
    s = Setup(model, tok, frozenset(eos), actions, probs)
    s.prompts = {p.id: list(tok.encode(task.chat_prompt(tok, p))) for p in probs}
    return s


def _decode(s: Setup, toks) -> tuple[str, bool]:
    """(text before the stop token, ended at a stop token)."""
    toks = list(toks)
    stop = bool(toks) and toks[-1] in s.eos
    return s.tok.decode(toks[:-1] if stop else toks, skip_special_tokens=False), stop


def sample_plain(s: Setup, keys: list[tuple], cfg: dict, batch: int) -> list[list[int]]:
    """pi_ref responses for (problem, k) keys, batched; row (problem, k) draws with
    ``rollout_rng(seed, problem id, k)`` whatever the batch."""
    from ..rollouts import rollout_rng, sample_batch

    H = cfg["horizon"]
    out = []
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        u = np.stack([rollout_rng(cfg["seed"], p.id, k).random(H) for p, k in chunk])
        prompts = [s.prompts[p.id] for p, _ in chunk]
        out += sample_batch(s.model, prompts, u, H, s.eos, cfg["temp"])
    return out


# -- calibration -------------------------------------------------------------------------------

CALIBRATION_SEED = 9  # the calibration prompts: eval-split names of seed 9, never evaluated


def calibrate(args, cfg: dict) -> None:
    """plain's success rate, asserts and cost for each N of ``--calibrate``; each N's numbers
    are written as soon as they are measured."""
    try:
        ns = [int(x) for x in args.calibrate.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--calibrate takes comma-separated integers, got {args.calibrate!r}")
    if not ns or min(ns) < 1:
        raise ConfigError("--calibrate needs test counts N >= 1")
    out = Path(args.out)
    lines = []
    for n in ns:
        c = dict(cfg, n_tests=n, seed=CALIBRATION_SEED)
        s = setup(c)
        keys = [(p, k) for p in s.problems for k in range(c["samples"])]
        t0 = time.perf_counter()
        outs = sample_plain(s, keys, c, len(keys))
        wall = time.perf_counter() - t0
        rows = []
        for (p, k), toks in zip(keys, outs):
            finish = "stop" if toks and toks[-1] in s.eos else "length"
            rows.append(_row(s, "pool", p, k, 0, toks, True, finish, c))
        exact = [r.tau and r.asserts == n for r in rows]
        per = {}
        for p in s.problems:
            per[p.function] = per.get(p.function, []) + [r.tau for r in rows if r.prompt_id == p.id]
        tokens = sum(r.tokens for r in rows)
        lines.append(
            dict(
                N=n,
                prompts=len(s.problems),
                responses=len(rows),
                success=float(np.mean([r.tau for r in rows])),
                success_exactly_n=float(np.mean(exact)),
                by_function={f: float(np.mean(v)) for f, v in per.items()},
                mean_asserts=float(np.mean([r.asserts for r in rows])),
                asserts_law={
                    int(a): int(c)
                    for a, c in zip(*np.unique([r.asserts for r in rows], return_counts=True))
                },
                length_cut=float(np.mean([r.finish == "length" for r in rows])),
                mean_tokens=tokens / len(rows),
                max_tokens=max(r.tokens for r in rows),
                wall_s=wall,
                tokens_per_s=tokens / wall,
                examples=[r.text for r in rows[:2]],
            )
        )
        x = lines[-1]
        print(
            f"[testcase_law] N={n}: success {x['success']:.3f} (exactly N: "
            f"{x['success_exactly_n']:.3f}) asserts {x['mean_asserts']:.2f} tokens "
            f"{x['mean_tokens']:.0f} cut {x['length_cut']:.2f} {wall:.0f}s",
            flush=True,
        )
        write_calibration(out, args.command, cfg, lines)  # after every N: a kill keeps them


def write_calibration(out: Path, command: str, cfg: dict, lines: list[dict]) -> None:
    from .report import environment, markdown_table, now

    columns = {
        "N": "N",
        "responses": "responses",
        "success": "success",
        "success_exactly_n": "exactly N",
        "mean_asserts": "mean asserts",
        "length_cut": "length cut",
        "mean_tokens": "tokens",
        "max_tokens": "longest",
        "wall_s": "batch wall s",
        "tokens_per_s": "tokens/s",
    }
    table = markdown_table(lines, list(columns), headers=columns)
    by_fn = markdown_table(
        [dict(N=x["N"], **x["by_function"]) for x in lines],
    )
    laws = "\n".join(f"- N = {x['N']}: {x['asserts_law']}" for x in lines)
    md = (
        "# `testcase_law` calibration: plain's success rate by N\n\n"
        f"Command: `{command}`\n\nDate: {now()}\n\n"
        f"Prompts: {cfg['problems']} of the calibration set (eval-split names of seed "
        f"{CALIBRATION_SEED}, never evaluated), {cfg['samples']} plain responses each, one "
        f"batch per N; temperature {cfg['temp']}, horizon {cfg['horizon']} tokens, functions "
        f"{cfg['functions']}.\n\n"
        "success: tau = 1 (every line a passing assert, any number); exactly N: tau of "
        "`--tau exactly-n`; length cut: the share that hit the horizon.\n\n"
        f"{table}\nSuccess by function:\n\n{by_fn}\nAsserts per response (value: count):\n\n"
        f"{laws}\n"
    )
    atomic_write(out / "calibration.md", md)
    atomic_write(
        out / "calibration.json",
        json.dumps(
            {"command": command, "config": cfg, "lines": lines, "environment": environment()},
            indent=1,
        )
        + "\n",
    )
    print(table)


# -- the pool: plain responses and the pi* proposals --------------------------------------------


def pool_target(cfg: dict) -> int:
    """Accepted pi* rows wanted per prompt: the total split evenly."""
    return math.ceil(cfg["min_accepted"] / cfg["problems"])


def fill_pool(s: Setup, cfg: dict, path: Path) -> list[Row]:
    """Grow the pool until every prompt has ``samples`` plain rows and ``pool_target``
    accepted rows after them (or ``max_pool`` rows); returns every pool row."""
    from .harness import check_drained

    _check_meta(path, cfg, POOL_KEYS)
    rows = read_rows(path)
    target, n_plain = pool_target(cfg), cfg["samples"]
    while True:
        keys = []
        for p in s.problems:
            have = {r.j for r in rows if r.prompt_id == p.id}
            n = len(have)
            acc = sum(r.tau > 0 for r in rows if r.prompt_id == p.id and r.j >= n_plain)
            props = sum(1 for j in have if j >= n_plain)
            if n >= n_plain and (acc >= target or n >= cfg["max_pool"]):
                continue
            # enough proposals for the missing accepted rows at the rate seen so far (a prior
            # of 1/5 before any), at least a batch's share
            rate = max((acc + 1) / (props + 5), 0.02)
            want = max(n_plain - n, 0) + math.ceil(max(target - acc, 0) / rate)
            want = min(max(want, 4), cfg["max_pool"] - n)
            keys += [(p, j) for j in range(n + want) if j not in have][:want]
        if not keys:
            return rows
        print(f"[testcase_law] pool: {len(keys)} plain responses to sample", flush=True)
        b = cfg["batch_size"]
        for start in range(0, len(keys), b):
            check_drained(len(keys) - start, "pool responses")  # between batches (SIGUSR1)
            chunk = keys[start : start + b]
            outs = sample_plain(s, chunk, cfg, b)
            new = []
            for (p, j), toks in zip(chunk, outs):
                finish = "stop" if toks and toks[-1] in s.eos else "length"
                new.append(_row(s, "pool", p, j, cfg["seed"], toks, True, finish, cfg))
            _append(path, new)
            rows += new
            done = len(rows)
            acc = sum(r.tau > 0 for r in rows if r.j >= n_plain)
            print(f"[testcase_law] pool: {done} rows, {acc} accepted for pi*", flush=True)


# -- the walks -------------------------------------------------------------------------------


def sample_walks(s: Setup, cfg: dict, configs, pool: list[Row], path: Path) -> None:
    """The missing rows of the walk configs, through the batched engine."""
    from ..lm import MLXLanguageModel
    from ..model_verifier import ValueHeadVerifier
    from ..registry import HeadSpec, make_sampler
    from .harness import engine_samples, timed_sample

    walks = [c for c in configs if c[1] != "plain"]
    if not walks:
        return
    if not cfg["head"]:
        raise ConfigError(
            f"{', '.join(c[0] for c in walks)} need --head (a value head trained by "
            "`mlx-vgb train-verifier --reward testcase_law`; see docs/benchmarks.md)"
        )
    _check_meta(path, cfg, ROWS_KEYS)
    done = {(r.config, r.prompt_id, r.j) for r in read_rows(path)}
    head = HeadSpec(cfg["head"]).load_head(s.model)
    plain_cost = {
        p.id: float(np.mean([r.tokens for r in pool if r.prompt_id == p.id])) for p in s.problems
    }
    index = {p.id: i for i, p in enumerate(s.problems)}

    def job(label, kind, drift, p, j):
        lm = MLXLanguageModel(s.model, s.tok, eos_token_ids=s.eos, value_head=head)

        def tilt(prompt_ids, response):
            return _analyse(s, p, response, cfg).tau

        ver = ValueHeadVerifier(lm, tilt=tilt, floor=FLOOR)
        smp = make_sampler(
            "action-rs" if kind == "action-rs" else "vgb",
            max_tokens=cfg["horizon"],
            actions=s.actions,
            temp=cfg["temp"],
            candidates=cfg["candidates"],
            choice="rejection",
            drift=drift,
            max_forward_tokens=int(cfg["budget"] * plain_cost[p.id]) + 1,
        )
        if kind == "vgb-nopad":
            smp.pad = False
        seed = 1_000_003 * cfg["seed"] + 1000 * index[p.id] + j
        r, wall = timed_sample(smp, lm, ver, s.prompts[p.id], seed)
        return _row(
            s,
            label,
            p,
            j,
            seed,
            r.tokens,
            r.reached_leaf,
            r.finish_reason,
            cfg,
            forward_tokens=r.stats.forward_tokens,
            steps=r.stats.steps,
            backtracks=r.stats.backtracks,
            inexact_steps=r.stats.inexact_steps,
            wall_s=wall,
        )

    todo = [
        (label, kind, drift, p, j)
        for label, kind, drift in walks
        for p in s.problems
        for j in range(cfg["samples"])
        if (label, p.id, j) not in done
    ]
    if not todo:
        return
    print(f"[testcase_law] {len(todo)} walks to sample ({len(done)} resumed)", flush=True)

    def write(i: int, row: Row) -> None:
        _append(path, [row])
        print(
            f"[testcase_law] {row.config} {row.prompt_id}#{row.j}: tau={row.tau:g} "
            f"asserts={row.asserts} fwd={row.forward_tokens} bt={row.backtracks} "
            f"{row.finish} {row.wall_s:.0f}s",
            flush=True,
        )

    engine_samples([lambda key=key: job(*key) for key in todo], cfg["concurrency"], on_done=write)


def run(args):
    cfg = sizes(args)
    if args.calibrate is not None:
        calibrate(args, cfg)
        return False
    if args.write_prompts is not None:
        return write_prompts(args, cfg)
    configs = parse_configs(args.configs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = setup(cfg)
    pool_path, rows_path = out / "pool.jsonl", out / "rows.jsonl"
    if args.report_only:
        pool = read_rows(pool_path)
    else:
        pool = fill_pool(s, cfg, pool_path)
        sample_walks(s, cfg, configs, pool, rows_path)
    rows = read_rows(rows_path)
    labels = [c[0] for c in configs]
    # every config with rows in this folder is reported (earlier commands' too)
    labels += sorted({r.config for r in rows} - set(labels))
    write_report(args, cfg, s.problems, labels, pool, rows)


def write_prompts(args, cfg: dict) -> bool:
    from ..generate import load
    from ..tasks import testcase_law as task

    _, tok = load(cfg["model"])
    probs = task.make_problems("train", args.count, cfg["n_tests"], cfg["functions"], cfg["seed"])
    atomic_write(args.write_prompts, task.prompts_jsonl(tok, probs, cfg["horizon"]))
    print(f"[testcase_law] wrote {len(probs)} training prompts to {args.write_prompts}")
    return False


# -- the report ------------------------------------------------------------------------------


def _by_prompt(rows: list[Row], field_: str, problems) -> dict[str, list[list[int]]]:
    """{prompt id: [values of each response]}: one value (``asserts``) or several
    (``list_lengths``) per response."""
    out: dict[str, list[list[int]]] = {p.id: [] for p in problems}
    for r in rows:
        if r.prompt_id in out:
            v = getattr(r, field_)
            out[r.prompt_id].append(list(v) if isinstance(v, list) else [int(v)])
    return out


LAWS = {"asserts": "asserts per response", "list_lengths": "list length len(l) per test"}


def summarize(cfg, problems, labels, pool: list[Row], rows: list[Row], reps: int = BOOTSTRAP):
    """The report's numbers: per config outcomes and costs, distances to pi* per law."""
    from .length_laws import compare

    n = cfg["samples"]
    ids = {p.id for p in problems}
    plain = [r for r in pool if r.j < n and r.prompt_id in ids]
    accepted = [r for r in pool if r.j >= n and r.tau > 0 and r.prompt_id in ids]
    proposals = [r for r in pool if r.j >= n and r.prompt_id in ids]
    groups = {"plain": plain}
    for label in labels:
        if label != "plain":
            groups[label] = [
                r for r in rows if r.config == label and r.j < n and r.prompt_id in ids
            ]
    groups = {k: v for k, v in groups.items() if v}
    plain_tokens = float(np.mean([r.tokens for r in plain])) if plain else float("nan")
    lines = {}
    for label, g in groups.items():
        fin = [r for r in g if r.finished]
        ok = [r for r in fin if r.tau > 0]
        lines[label] = dict(
            responses=len(g),
            finished=len(fin) / len(g),
            correct=float(np.mean([r.tau > 0 for r in g])),
            asserts=float(np.mean([r.asserts for r in fin])) if fin else None,
            exactly_n=float(np.mean([r.asserts == cfg["n_tests"] for r in fin])) if fin else None,
            pass_rate=float(sum(r.passed for r in fin) / max(1, sum(r.lines for r in fin))),
            distinct_tests=float(np.mean([r.distinct_tests for r in ok])) if ok else None,
            distinct_types=float(np.mean([r.distinct_types for r in ok])) if ok else None,
            forward_tokens=float(np.mean([r.forward_tokens for r in g])),
            fwd_ratio=float(np.mean([r.forward_tokens for r in g]) / plain_tokens),
            backtracks=float(np.mean([r.backtracks for r in g])),
            inexact_steps=int(sum(r.inexact_steps for r in g)),
            wall_s=float(np.mean([r.wall_s for r in g])),
        )
    pistar = dict(
        accepted=len(accepted),
        proposals=len(proposals),
        rate=len(accepted) / len(proposals) if proposals else None,
        per_prompt={p.id: sum(r.prompt_id == p.id for r in accepted) for p in problems},
        asserts=float(np.mean([r.asserts for r in accepted])) if accepted else None,
        exactly_n=float(np.mean([r.asserts == cfg["n_tests"] for r in accepted]))
        if accepted
        else None,
        distinct_tests=float(np.mean([r.distinct_tests for r in accepted])) if accepted else None,
        distinct_types=float(np.mean([r.distinct_types for r in accepted])) if accepted else None,
    )
    laws, verdicts = {}, []
    for key in LAWS:
        target = _by_prompt(accepted, key, problems)
        samples = {
            label: _by_prompt([r for r in g if r.finished], key, problems)
            for label, g in groups.items()
        }
        c = compare(target, samples, reps=reps, seed=cfg["seed"]) if accepted else None
        laws[key] = dict(
            tv={k: v.as_dict() for k, v in c.tv.items()} if c else {},
            kl={k: v.as_dict() for k, v in c.kl.items()} if c else {},
            pistar=_law(target),
            configs={label: _law(s) for label, s in samples.items()},
        )
        if c and "action-rs" in samples:
            for label in samples:
                if label.startswith("vgb"):
                    verdicts.append(
                        dict(
                            law=key,
                            vgb=label,
                            tv_vgb=c.tv[label].value,
                            tv_ars=c.tv["action-rs"].value,
                            p_closer_tv=c.closer(label, "action-rs", "tv"),
                            kl_vgb=c.kl[label].value,
                            kl_ars=c.kl["action-rs"].value,
                            p_closer_kl=c.closer(label, "action-rs", "kl"),
                        )
                    )
    return dict(configs=lines, pistar=pistar, laws=laws, verdicts=verdicts)


def _law(sample: dict) -> dict:
    """The equal-weight mixture law of a sample, as {value: probability}."""
    from .length_laws import mixture, support

    prompts = [p for p, resp in sample.items() if any(resp)]
    values = support(sample)
    m = mixture(sample, values, prompts)
    return {int(v): float(x) for v, x in zip(values, m)}


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("value") is None or not np.isfinite(d["value"]):
        return "-"
    lo, hi = d["lo"], d["hi"]
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(lo) else ""
    return f"{d['value']:.{digits}f}{ci}"


def write_report(args, cfg, problems, labels, pool: list[Row], rows: list[Row]) -> None:
    from .report import Report, markdown_table

    out = Path(args.out)
    sm = summarize(cfg, problems, labels, pool, rows)
    rep = Report(task="testcase_law", command=args.command, config=cfg)
    rep.summary = sm
    rep.rows = [asdict(r) for r in rows]
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    ps = sm["pistar"]
    law_rows = []
    for label, c in sm["configs"].items():
        law_rows.append(
            {
                "config": label,
                "finished": round(c["finished"] * c["responses"]),
                **{f"TV {k}": _ci(sm["laws"][k]["tv"].get(label)) for k in LAWS},
                **{f"KL {k}": _ci(sm["laws"][k]["kl"].get(label)) for k in LAWS},
                **{
                    f"floor TV {k}": (sm["laws"][k]["tv"].get(label) or {}).get("floor")
                    for k in LAWS
                },
            }
        )
    rep.add_section(
        "Distance to pi* (95% bootstrap intervals)",
        f"pi*: {ps['accepted']} accepted of {ps['proposals']} plain proposals "
        f"(rate {ps['rate'] if ps['rate'] is not None else float('nan'):.3f}), per prompt "
        f"{ps['per_prompt']}; mean asserts {ps['asserts']}, exactly N {ps['exactly_n']}, "
        f"distinct tests / response {ps['distinct_tests']}, distinct types / response "
        f"{ps['distinct_types']}.\n\n"
        + markdown_table(law_rows)
        + "\nfloor TV: the TV an exact sampler with the same numbers of responses would show "
        "(mean over bootstrap draws from the pi* rows). KL(pi* || config) with the config's "
        "counts smoothed by +1/2 on the common support.\n",
    )
    if sm["verdicts"]:
        vt = [
            {
                "law": LAWS[v["law"]],
                "vgb": v["vgb"],
                "TV vgb": v["tv_vgb"],
                "TV action-rs": v["tv_ars"],
                "P(vgb closer, TV)": v["p_closer_tv"],
                "KL vgb": v["kl_vgb"],
                "KL action-rs": v["kl_ars"],
                "P(vgb closer, KL)": v["p_closer_kl"],
            }
            for v in sm["verdicts"]
        ]
        rep.add_section(
            "The paper's claim: is VGB's law closer to pi* than ActionLevelRS's?",
            markdown_table(vt)
            + "\nP(vgb closer): the share of paired bootstrap resamples (the same pi* resample "
            "for both) in which VGB's distance is the smaller.\n",
        )
    cols = ["config", "responses", "finished", "correct", "asserts", "exactly_n", "pass_rate",
            "distinct_tests", "distinct_types", "forward_tokens", "fwd_ratio", "backtracks",
            "inexact_steps", "wall_s"]  # fmt: skip
    rep.add_section(
        "Outcomes and cost",
        markdown_table([dict(config=k, **v) for k, v in sm["configs"].items()], cols)
        + "\nasserts, exactly_n, pass_rate: over the finished responses; distinct tests and "
        "types: per correct response; forward tokens per response (fwd_ratio: over plain's "
        "mean tokens); inexact_steps: rejection steps that fell back to the biased rule.\n",
    )
    ex = []
    for label in sm["configs"]:
        src = (
            [r for r in pool if r.j < cfg["samples"]]
            if label == "plain"
            else [r for r in rows if r.config == label]
        )
        for r in src[:2]:
            ex.append(
                dict(
                    config=label,
                    tau=r.tau,
                    text=r.text.replace("|", "/").replace("\n", " ⏎ ")[:240],
                )
            )
    rep.add_section("Examples (first 2 per config)", markdown_table(ex))
    _plot_laws(out / "laws.png", sm)
    rep.plots = ["laws.png"]
    rep.write(out)
    print(markdown_table(law_rows))


def _plot_laws(path: Path, sm: dict) -> None:
    """Two panels: the law of asserts per response and of list lengths, pi* and each config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _save

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, (key, title) in zip(axes, LAWS.items()):
        law = sm["laws"][key]
        series = {"pi*": law["pistar"], **law["configs"]}
        values = sorted({v for s in series.values() for v in s})
        k = max(1, len(series))
        w = 0.8 / k
        x = np.arange(len(values))
        for i, (name, s) in enumerate(series.items()):
            ax.bar(x + (i - (k - 1) / 2) * w, [s.get(v, 0.0) for v in values], w, label=name)
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in values], fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("probability (equal weight per prompt)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
