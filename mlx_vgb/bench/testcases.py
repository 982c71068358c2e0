"""Benchmark: test-case writing (``mlx_vgb.tasks.testcases``: prompt, ``AssertLines``, reward)
with SmolLM2, by sampler.

With ``--head DIR`` the sampler ``vgb-head`` takes V^ from a value head trained by
``mlx-vgb train-verifier`` (``--reward testcases``, prompts from ``--write-prompts``: other seeds
than the benchmark's); tau stays the exact check.

Metrics per sampler: correct rate (tau = 1), distinct correct asserts per response, length
(number of finished asserts) distribution, compared with pi* = pi_ref(. | tau = 1) estimated by
rejection from pi_ref samples (``--pistar-samples N`` batched per problem, else the plain
responses); forward tokens per response (cost).

Every response is a job of the batched engine (``mlx_vgb.engine``; ``--concurrency`` walks at
once, 1: one at a time), all problems' responses in one window: the forwards of the walks in
flight are served as one batched forward, and a response's seed is the one it has alone, so it
is the response it is alone up to float rounding between a batched and a single-row matmul.
Its wall time is the job's own time inside the batch (``Engine.job_seconds``: its turns, the
verifier's sandbox calls included, plus its row-share of the batched forwards), not the elapsed
time. The pi* estimate (``--pistar-samples``) does not go through the engine: it is batched
ancestral sampling already (``rollouts.sample_completions``, one forward for all its rows), run
before the walks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import ConfigError
from ..models import MODEL_HELP
from ..registry import make_sampler
from ..resume import settings_diff
from ..tasks.testcases import AssertLines, analyse, make_problem, stop_tokens, training_prompts
from .harness import (
    check_concurrency,
    engine_samples,
    settings,
    timed_sample,
    wall_note,
    warm_up,
)
from .report import Report, markdown_table, mean_se, plot_bars, plot_hist

FULL = dict(
    horizon=64,
    problems=2,
    samples=2,
    plain_samples=8,
    candidates=4,
    drift=0.25,
    max_steps=60,
    concurrency=8,
)
QUICK = dict(
    horizon=32,
    problems=1,
    samples=1,
    plain_samples=1,
    candidates=2,
    drift=0.25,
    max_steps=12,
    concurrency=4,
)
SAMPLERS = ("plain", "action-rs", "block-bon", "vgb", "vgb-head")

# the child-choice rule of the committed results (the fast K-candidate step)
CHOICE = "self-normalized"


def add_args(p) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--horizon", type=int, default=None, help="H, tokens per response (64)")
    p.add_argument("--problems", type=int, default=None, help="reference functions used")
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="responses per problem for action-rs, block-bon, vgb",
    )
    p.add_argument(
        "--plain-samples",
        type=int,
        default=None,
        help="plain responses per problem (also the pi* rejection estimate)",
    )
    p.add_argument("--candidates", type=int, default=None, help="K (VGB, ActionLevelRS), n (BoN)")
    p.add_argument("--drift", type=float, default=None, help="VGB lambda")
    p.add_argument("--max-steps", type=int, default=None, help="walk-step budget per response")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="walks in the batched engine at once (8; quick 4; 1: one at a time)",
    )
    p.add_argument(
        "--samplers",
        nargs="+",
        default=None,
        choices=SAMPLERS,
        help="default: all (vgb-head only with --head)",
    )
    p.add_argument(
        "--head",
        default=None,
        metavar="DIR",
        help="a value head trained with `mlx-vgb train-verifier` on prompts from "
        "--write-prompts: adds the sampler vgb-head (V^ from the head, tau exact)",
    )
    p.add_argument(
        "--pistar-samples",
        type=int,
        default=None,
        help="batched pi_ref samples per problem for the pi* length law (rejection)",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="DIR",
        help="take the rows of samplers not run now from DIR/results.json (an "
        "earlier run with the same settings): add a sampler to a finished run",
    )
    p.add_argument(
        "--write-prompts",
        type=Path,
        default=None,
        metavar="JSONL",
        help="write training prompts for train-verifier (other seeds than the "
        "benchmark's) and exit",
    )
    p.add_argument(
        "--prompt-seeds",
        type=int,
        default=12,
        help="with --write-prompts: seeds x 4 reference functions",
    )


@dataclass
class TestcaseSample:
    sampler: str
    problem: int
    name: str
    seed: int
    text: str
    correct: bool
    n_asserts: int
    distinct_correct: int
    finish: str
    tokens: int
    forward_tokens: int
    steps: int
    backtracks: int
    wall_s: float


def run(args) -> None:
    from .. import Lines
    from ..generate import load
    from ..lm import MLXLanguageModel
    from ..model_verifier import ValueHeadVerifier

    if args.write_prompts is not None:
        rows = training_prompts(args.prompt_seeds, args.seed, args.horizon or FULL["horizon"])
        atomic_write(args.write_prompts, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"[testcases] wrote {len(rows)} training prompts to {args.write_prompts}")
        return False

    cfg = settings(
        args,
        FULL,
        QUICK,
        (
            "horizon",
            "problems",
            "samples",
            "plain_samples",
            "candidates",
            "drift",
            "max_steps",
            "concurrency",
        ),
    )
    check_concurrency(cfg["concurrency"])
    samplers = args.samplers or [n for n in SAMPLERS if n != "vgb-head" or args.head]
    if "vgb-head" in samplers and not args.head:
        raise ConfigError(
            "the sampler vgb-head needs --head DIR (train one: see docs/benchmarks.md, 'testcases')"
        )
    cfg.update(
        seed=args.seed,
        model=args.model or "embedded SmolLM2",
        temp=1.0,
        choice=CHOICE,
        samplers=samplers,
        line_max_tokens=40,
        verifier_floor=0.0,
    )
    if args.head:
        cfg["head"] = str(args.head)
    cfg["pistar_samples"] = args.pistar_samples or 0
    reused = reuse_rows(args.reuse, cfg, samplers) if args.reuse else []
    model, tok = load(args.model)
    base = MLXLanguageModel(model, tok)
    nl, stop = stop_tokens(tok, base.vocab_size)
    lm = MLXLanguageModel(model, tok, eos_token_ids=base.eos_token_ids | stop)
    head_lm = None
    if args.head:
        from ..registry import make_language_model

        # a second runtime over the same weights whose forward also gives V^ from the head
        head_lm = make_language_model(
            model, tok, f"head:{args.head}", eos_token_ids=lm.eos_token_ids
        )
    actions = Lines(nl | stop | lm.eos_token_ids, max_len=40)
    H, K = cfg["horizon"], cfg["candidates"]

    def make(name):  # vgb-head: the same walk as vgb; only its verifier differs (below)
        return make_sampler(
            "vgb" if name == "vgb-head" else name,
            max_tokens=H,
            actions=actions,
            candidates=K,
            choice=CHOICE,
            drift=cfg["drift"],
            max_steps=None if name == "plain" else cfg["max_steps"],
        )

    pistar: list[tuple[str, bool, int]] = []  # (target name, correct, #asserts) of pi_ref samples
    problems = [make_problem(i, args.seed) for i in range(cfg["problems"])]
    cfg["problem_list"] = [{"name": p["name"], "reference": p["body"]} for p in problems]
    warm_up(lm, actions)
    prompts, vers = [], []
    for pi, prob in enumerate(problems):
        prompts.append(list(tok.encode(prob["prompt"])))
        vers.append(
            AssertLines(prob["name"], prob["reference"], stop).bind(lm.decode, base.eos_token_ids)
        )
        if cfg["pistar_samples"]:  # batched already: before the walks, outside the engine
            pistar.extend(
                pistar_lengths(
                    model,
                    prompts[pi],
                    vers[pi],
                    lm.eos_token_ids,
                    cfg["pistar_samples"],
                    H,
                    seed=1000 * args.seed + pi,
                )
            )
    plan = [
        (pi, name, i)
        for pi in range(len(problems))
        for name in cfg["samplers"]
        for i in range(cfg["plain_samples"] if name == "plain" else cfg["samples"])
    ]

    def job(pi: int, name: str, i: int) -> TestcaseSample:
        # one engine job: its own language model object (per-run caches) and sampler; the
        # problem's verifier is shared (its memo of line verdicts; jobs take turns)
        prob, ver = problems[pi], vers[pi]
        if name == "vgb-head":  # V^ from the learned head, tau still the exact check
            run_lm = MLXLanguageModel(
                model, tok, eos_token_ids=lm.eos_token_ids, value_head=head_lm.value_head
            )
            run_ver = ValueHeadVerifier(run_lm, tilt=lambda p, r, ver=ver: ver.tilt([r])[0])
        else:
            run_lm, run_ver = MLXLanguageModel(model, tok, eos_token_ids=lm.eos_token_ids), ver
        seed = 100_000 * args.seed + 1000 * pi + i
        r, wall = timed_sample(make(name), run_lm, run_ver, prompts[pi], seed)
        stopped = r.finish_reason == "stop"
        text = ver._text(r.tokens)  # keeps the text of a stop token
        tau = float(ver.tilt([r.tokens])[0]) if r.reached_leaf else 0.0
        n_as, n_dc = analyse(text, ver, stopped)
        return TestcaseSample(
            sampler=name,
            problem=pi,
            name=prob["name"],
            seed=seed,
            text=text,
            correct=bool(r.reached_leaf and tau > 0),
            n_asserts=n_as,
            distinct_correct=n_dc,
            finish=r.finish_reason,
            tokens=len(r.tokens),
            forward_tokens=r.stats.forward_tokens,
            steps=r.stats.steps,
            backtracks=r.stats.backtracks,
            wall_s=wall,
        )

    def done(k: int, s: TestcaseSample) -> None:
        print(
            f"[testcases] p{s.problem} {s.sampler} #{plan[k][2]}: correct={s.correct} "
            f"asserts={s.n_asserts} fwd={s.forward_tokens} {s.wall_s:.0f}s {s.text!r}",
            flush=True,
        )

    samples, engine = engine_samples([lambda p=p: job(*p) for p in plan], cfg["concurrency"], done)
    cfg["sandbox_calls"] = sum(v.sandbox_calls for v in vers)
    if reused:
        cfg["samplers"] = [n for n in SAMPLERS if n in set(samplers) | {s.sampler for s in reused}]
        samples = reused + samples
    write(args, cfg, samples, pistar, engine)


SAME = (
    "horizon",
    "problems",
    "samples",
    "plain_samples",
    "candidates",
    "drift",
    "max_steps",
    "seed",
    "model",
    "temp",
    "line_max_tokens",
    "verifier_floor",
)


def reuse_rows(folder: Path, cfg: dict, samplers) -> list[TestcaseSample]:
    """Rows of the samplers not run now, from an earlier run with the same settings."""
    path = Path(folder) / "results.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--reuse: cannot read {path} ({e})")
    diff = settings_diff(old["config"], cfg, SAME)
    if diff:
        raise ConfigError(
            f"--reuse: {path} ran with other settings "
            f"(earlier, now): {diff}; run every sampler again instead"
        )
    rows = [TestcaseSample(**r) for r in old["rows"] if r["sampler"] not in set(samplers)]
    cfg["reused"] = {
        "from": str(path),
        "command": old["command"],
        "date": old["date"],
        "samplers": sorted({r.sampler for r in rows}),
    }
    return rows


def pistar_lengths(
    model, prompt, ver: AssertLines, stop_ids, n: int, horizon: int, seed: int, batch: int = 16
) -> list[tuple[str, bool, int]]:
    """``n`` responses of pi_ref (batched ancestral sampling, the same law as ``plain``: a row
    ends at EOS / a blank-line token or after ``horizon`` tokens), scored by tau: the accepted
    ones are exact samples of pi* = pi_ref(. | tau = 1) (rejection sampling)."""
    from ..rollouts import sample_completions

    rng = np.random.default_rng([seed, 7])
    out = []
    for start in range(0, n, batch):
        u = rng.random((min(batch, n - start), horizon))
        for toks in sample_completions(model, prompt, u, horizon, stop_ids):
            tau = float(ver.tilt([tuple(toks)])[0])
            stopped = bool(toks) and toks[-1] in stop_ids
            n_as, _ = analyse(ver._text(toks), ver, stopped)
            out.append((ver.name, tau > 0, n_as))
    print(
        f"[testcases] pi* estimate for {ver.name}: {sum(c for _, c, _ in out)} of {len(out)} "
        "pi_ref samples accepted",
        flush=True,
    )
    return out


def write(
    args, cfg, samples: list[TestcaseSample], pistar_rows=(), engine: dict | None = None
) -> None:
    out = Path(args.out)
    rep = Report(task="testcases", command=args.command, config=cfg, engine=engine)
    rep.rows = [asdict(s) for s in samples]
    names = [n for n in cfg["samplers"] if any(s.sampler == n for s in samples)]
    plain = [s for s in samples if s.sampler == "plain"]
    if pistar_rows:  # the batched pi_ref samples (plain's law), else the plain responses
        pistar = [k for _, ok, k in pistar_rows if ok]
        n_proposed, source = len(pistar_rows), "batched pi_ref samples"
    else:
        pistar = [s.n_asserts for s in plain if s.correct]
        n_proposed, source = len(plain), "the plain samples"
    table = []
    for n in names:
        g = [s for s in samples if s.sampler == n]
        c, c_se = mean_se([s.correct for s in g])
        d, d_se = mean_se([s.distinct_correct for s in g])
        lens = [s.n_asserts for s in g if s.correct]
        table.append(
            {
                "sampler": n,
                "n": len(g),
                "correct": c,
                "correct_se": c_se,
                "distinct correct asserts": d,
                "distinct_se": d_se,
                "mean #asserts (correct)": float(np.mean(lens)) if lens else None,
                "mean #asserts (all)": float(np.mean([s.n_asserts for s in g])),
                "forward tok / response": float(np.mean([s.forward_tokens for s in g])),
                "tokens / response": float(np.mean([s.tokens for s in g])),
                "backtracks / response": float(np.mean([s.backtracks for s in g])),
                "wall s / response": float(np.mean([s.wall_s for s in g])),
            }
        )
    rep.summary = {
        "samplers": {t["sampler"]: {k: v for k, v in t.items() if k != "sampler"} for t in table},
        "pi_star_lengths": pistar,
        "pi_star_accepted": len(pistar),
        "pi_star_proposed": n_proposed,
        "pi_star_source": source,
        "lengths": {
            n: [s.n_asserts for s in samples if s.sampler == n and s.correct] for n in names
        },
    }
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    rep.add_section(
        "Results",
        markdown_table(
            table,
            [
                "sampler",
                "n",
                "correct",
                "correct_se",
                "distinct correct asserts",
                "distinct_se",
                "mean #asserts (correct)",
                "mean #asserts (all)",
                "forward tok / response",
                "tokens / response",
                "backtracks / response",
                "wall s / response",
            ],
        )
        + f"\npi* length law: estimated by rejection from {source}: "
        f"{len(pistar)} of {n_proposed} accepted (tau = 1), lengths {sorted(pistar)}. "
        f"s.e. = standard error over responses; {wall_note(cfg.get('concurrency'))}."
        + (
            f"\n\nRows of {', '.join(cfg['reused']['samplers'])} reused from the earlier run "
            f"`{cfg['reused']['command']}` ({cfg['reused']['date']}, same settings and seeds; "
            "their wall times are from that run)."
            if cfg.get("reused")
            else ""
        ),
    )
    ex = []
    for n in names:
        for s in [s for s in samples if s.sampler == n][:2]:
            ex.append(
                {
                    "sampler": n,
                    "correct": s.correct,
                    "#asserts": s.n_asserts,
                    "text": s.text.replace("|", "/").replace("\n", " ⏎ ")[:300],
                }
            )
    rep.add_section("Examples (first 2 per sampler)", markdown_table(ex))
    plot_bars(
        out / "correct.png",
        names,
        {"correct rate": [t["correct"] for t in table]},
        errs={"correct rate": [t["correct_se"] for t in table]},
        ylabel="fraction",
        title="Test cases: all asserts pass",
    )
    plot_bars(
        out / "distinct_cost.png",
        names,
        {
            "distinct correct asserts": [t["distinct correct asserts"] for t in table],
            "forward tok / 100": [t["forward tok / response"] / 100 for t in table],
        },
        ylabel="count",
        title="Test cases: distinct correct asserts, cost",
    )
    hist = {"pi* (rejection from pi_ref)": pistar}
    hist.update({n: rep.summary["lengths"][n] for n in names if n != "plain"})
    plot_hist(
        out / "lengths.png",
        hist,
        xlabel="number of asserts (correct responses)",
        title="Test cases: length law vs pi*",
        bins=list(np.arange(-0.5, 12.5, 1.0)),
    )
    rep.plots = ["correct.png", "distinct_cost.png", "lengths.png"]
    rep.write(out)
