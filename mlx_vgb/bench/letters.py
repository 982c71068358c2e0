"""Letter avoidance (paper Section 6): a one-sentence story without the letter e, SmolLM2.

Verifier (no training): V^(y_1..h) = alpha^(H-h) * r(y_1..h), r = 1 if no 'e' so far, tau = r
(``no-letter:e,alpha=A``). ActionLevelRS with this V^ is locally constrained decoding (the factor
alpha^(H-h-1) is the same for every child, so alpha does not change it); VGB moves up with weight
alpha * V^ relative to the children, i.e. alpha acts as the drift lambda.

Metrics per sampler: constraint satisfied (tau = 1 and the response finished), coherence = mean
log-prob per response token under the unconstrained model (the same SmolLM2: no larger model
runs here in reasonable time), distinct outputs, cost (forward tokens, walk steps, backtracks)
per output token and wall time relative to plain sampling in the same run.

Every response is a job of the batched engine (``mlx_vgb.engine``; ``--concurrency`` walks at
once, 1: one at a time): the forwards of the walks in flight are served as one batched forward,
and a response's seed is the one it has alone, so it is the response it is alone up to float
rounding between a batched and a single-row matmul. Its wall time is the job's own time inside
the batch (``Engine.job_seconds``: its turns plus its row-share of the batched forwards), not
the elapsed time. Coherence is scored after the walks, one response at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..models import MODEL_HELP
from .harness import (
    check_concurrency,
    engine_samples,
    settings,
    timed_sample,
    wall_note,
    warm_up,
)
from .report import Report, markdown_table, mean_se, plot_bars

PROMPT = "Write a one-sentence story without the letter e."
FULL = dict(horizon=32, alphas=[0.1, 0.3], samples=5, candidates=8, max_steps=300, concurrency=8)
QUICK = dict(horizon=8, alphas=[0.1], samples=1, candidates=4, max_steps=40, concurrency=4)


def add_args(p) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--horizon", type=int, default=None, help="H, tokens per response (32)")
    p.add_argument("--alphas", type=float, nargs="+", default=None, help="alpha values for VGB")
    p.add_argument("--samples", type=int, default=None, help="responses per sampler")
    p.add_argument("--candidates", type=int, default=None, help="K candidates per step")
    p.add_argument("--max-steps", type=int, default=None, help="walk-step budget per response")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="walks in the batched engine at once (8; quick 4; 1: one at a time)",
    )
    p.add_argument("--prompt", default=PROMPT)


def load_model(path: str | None):
    from ..generate import load

    return load(path)


def coherence(model, prompt_ids, responses) -> list[float]:
    """Mean log pi_ref(y_t | x, y_<t) per response token under ``model`` (no constraint)."""
    import mlx.core as mx

    out = []
    for y in responses:
        y = list(y)
        if not y:
            out.append(float("nan"))
            continue
        ids = mx.array([list(prompt_ids) + y])
        logits = model(ids[:, :-1]).astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        tgt = ids[0, len(prompt_ids) :]
        lp = mx.take_along_axis(logp[0, len(prompt_ids) - 1 :], tgt[:, None], axis=-1)
        out.append(float(mx.mean(lp)))
    return out


@dataclass
class LetterSample:
    sampler: str
    alpha: float | None
    seed: int
    text: str
    tokens: int
    finished: bool
    satisfied: bool
    coherence: float
    steps: int
    backtracks: int
    forward_tokens: int
    wall_s: float


def run(args) -> None:
    from ..generate import encode_prompt
    from ..lm import MLXLanguageModel
    from ..registry import NoLetterSpec, make_sampler, make_verifier

    cfg = settings(
        args,
        FULL,
        QUICK,
        ("horizon", "alphas", "samples", "candidates", "max_steps", "concurrency"),
    )
    check_concurrency(cfg["concurrency"])
    cfg.update(
        prompt=args.prompt,
        model=args.model or "embedded SmolLM2",
        temp=1.0,
        choice=f"{NoLetterSpec.default_choice}, K = {cfg['candidates']}",
    )
    model, tok = load_model(args.model)
    lm = MLXLanguageModel(model, tok)
    prompt = encode_prompt(tok, args.prompt)
    H = cfg["horizon"]
    runs = [("plain", None), ("action-rs", cfg["alphas"][0])]
    runs += [("vgb", a) for a in cfg["alphas"]]
    plan = [(name, alpha, i) for name, alpha in runs for i in range(cfg["samples"])]
    warm_up(lm, prompt=prompt)

    def job(name, alpha, i):
        # one engine job: its own language model object (per-run caches), verifier, sampler
        run_lm = MLXLanguageModel(model, tok)
        ver = make_verifier(NoLetterSpec("e", alpha or 0.1), run_lm, max_tokens=H)
        smp = make_sampler(
            name,
            max_tokens=H,
            candidates=cfg["candidates"],
            choice=NoLetterSpec.default_choice,
            max_steps=cfg["max_steps"],
        )
        return timed_sample(smp, run_lm, ver, prompt, 1000 * args.seed + i)

    def done(k, value):
        name, alpha, i = plan[k]
        print(f"[letters] {name} alpha={alpha} #{i}: {value[0].text or ''!r}", flush=True)

    results, engine = engine_samples([lambda p=p: job(*p) for p in plan], cfg["concurrency"], done)
    samples: list[LetterSample] = []
    for (name, alpha, i), (r, wall) in zip(plan, results):
        text = r.text or ""
        toks = [t for t in r.tokens if t not in lm.eos_token_ids]
        samples.append(
            LetterSample(
                sampler=name,
                alpha=alpha if name == "vgb" else None,
                seed=1000 * args.seed + i,
                text=text,
                tokens=len(r.tokens),
                finished=r.reached_leaf,
                satisfied=bool(r.reached_leaf and "e" not in text.lower()),
                coherence=coherence(model, prompt, [toks])[0],
                steps=r.stats.steps,
                backtracks=r.stats.backtracks,
                forward_tokens=r.stats.forward_tokens,
                wall_s=wall,
            )
        )
    write(args, cfg, samples, engine)


def _label(s: LetterSample) -> str:
    return s.sampler if s.alpha is None else f"{s.sampler} a={s.alpha:g}"


def write(args, cfg, samples: list[LetterSample], engine: dict | None = None) -> None:
    out = Path(args.out)
    rep = Report(task="letters", command=args.command, config=cfg, engine=engine)
    rep.rows = [asdict(s) for s in samples]
    labels = list(dict.fromkeys(_label(s) for s in samples))
    plain_wall = np.mean([s.wall_s / max(1, s.tokens) for s in samples if s.sampler == "plain"])
    table = []
    for lab in labels:
        g = [s for s in samples if _label(s) == lab]
        coh, coh_se = mean_se([s.coherence for s in g if s.satisfied] or [float("nan")])
        coh_all, _ = mean_se([s.coherence for s in g])
        toks = sum(max(1, s.tokens) for s in g)
        table.append(
            {
                "sampler": lab,
                "n": len(g),
                "satisfied": np.mean([s.satisfied for s in g]),
                "finished": np.mean([s.finished for s in g]),
                "coherence (satisfied)": f"{coh:.3f} ± {coh_se:.3f}",
                "_coh": coh,
                "_coh_se": coh_se,
                "coherence (all)": coh_all,
                "distinct": len({s.text for s in g}) / len(g),
                "forward tok / out tok": sum(s.forward_tokens for s in g) / toks,
                "steps / out tok": sum(s.steps for s in g) / toks,
                "backtracks / response": np.mean([s.backtracks for s in g]),
                "wall / out tok vs plain": (sum(s.wall_s for s in g) / toks)
                / max(plain_wall, 1e-9),
            }
        )
    rep.summary = {t["sampler"]: {k: v for k, v in t.items() if k != "sampler"} for t in table}
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    rep.add_section(
        "Results",
        markdown_table(
            table,
            [
                "sampler",
                "n",
                "satisfied",
                "finished",
                "coherence (satisfied)",
                "coherence (all)",
                "distinct",
                "forward tok / out tok",
                "steps / out tok",
                "backtracks / response",
                "wall / out tok vs plain",
            ],
        )
        + "\nCoherence: mean log-prob per token under the "
        "unconstrained model (higher is better), mean ± s.e. over the satisfied responses. "
        f"Ratios are measured in this one run; {wall_note(cfg.get('concurrency'))}.",
    )
    ex = []
    for lab in labels:
        for s in [s for s in samples if _label(s) == lab][:3]:
            ex.append(
                {
                    "sampler": lab,
                    "satisfied": s.satisfied,
                    "coherence": s.coherence,
                    "text": s.text.replace("|", "/").replace("\n", " "),
                }
            )
    rep.add_section("Examples (first 3 per sampler)", markdown_table(ex))
    plot_bars(
        out / "coherence.png",
        labels,
        {"coherence (satisfied)": [t["_coh"] for t in table]},
        errs={"coherence (satisfied)": [t["_coh_se"] for t in table]},
        ylabel="mean log-prob / token",
        title="Letter avoidance: coherence",
    )
    plot_bars(
        out / "satisfied_cost.png",
        labels,
        {"satisfied": [t["satisfied"] for t in table], "distinct": [t["distinct"] for t in table]},
        ylabel="fraction",
        title="Letter avoidance: constraint satisfied, distinct",
    )
    plot_bars(
        out / "cost.png",
        labels,
        {
            "forward tok / out tok": [t["forward tok / out tok"] for t in table],
            "wall / out tok vs plain": [t["wall / out tok vs plain"] for t in table],
        },
        ylabel="ratio",
        title="Letter avoidance: cost per output token",
    )
    rep.plots = ["coherence.png", "satisfied_cost.png", "cost.png"]
    rep.write(out)
