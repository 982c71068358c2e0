"""Cost of VGB: forward passes and wall time per output token against plain mlx_lm generation of
the same model in the same run; peak memory; Python overhead per walk step; how the cost grows
with the horizon H, the number of candidates K and the drift lambda (and what lambda does to
quality).

Part A (SmolLM2, one process, same prompt, ratios only): ``mlx_lm.stream_generate`` (plain),
our ``Plain`` sampler, and VGB with a value head on the generator (V^ from the same forward as
pi_ref) or with a separate verifier (a second copy of the model with its own KV cache and a value
head: one extra forward per valued prefix). The value heads are randomly initialised MLPs: cost
does not depend on the weights, and a random head makes the walk wander (drift lambda keeps it
moving down), so the numbers are a cost measurement, not a quality one.

Part B (ABC toy of ``bench abc``, value learned from N = 1000 samples, no model cost): walk steps
per output token vs H, K (``Candidates(K)``) and lambda, and the exact KL(pi* || output law) of
the practical walk at each lambda (closed form, see ``bench abc``). The Python overhead per walk
step is measured here, where the model costs nothing, and compared with one model forward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import VGB, ActionLevelRS, Candidates, Enumerate, Plain, toy
from ..model_verifier import ValueHeadVerifier
from ..models import MODEL_HELP
from .abc import MonteCarloValue, make_lm, no_aa, vgb_law
from .harness import settings
from .report import Report, markdown_table, plot_lines

PROMPT = "Write a one-sentence story about a cat."
FULL = dict(
    horizon=24,
    candidates=4,
    drift=0.5,
    repeats=3,
    toy_horizons=[6, 8, 10],
    toy_ks=[2, 4, 8],
    toy_drifts=[1.0, 0.8, 0.6, 0.4, 0.2],
    toy_samples=150,
)
LOW_BACKTRACK_DRIFT = 0.1
QUICK = dict(
    horizon=8,
    candidates=2,
    drift=0.5,
    repeats=1,
    toy_horizons=[6, 8],
    toy_ks=[2, 8],
    toy_drifts=[1.0, 0.5],
    toy_samples=10,
)


def add_args(p) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--candidates", type=int, default=None)
    p.add_argument("--drift", type=float, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--toy-samples", type=int, default=None)
    p.add_argument(
        "--part",
        choices=("all", "node", "engine"),
        default="all",
        help="node: only Part C, the per-node work (into <out>/node-work); engine: only "
        "Part D, N walks in the batched engine vs one after another (into <out>/engine)",
    )
    p.add_argument("--engine-walks", type=int, default=None, help="Part D: N walks")
    p.add_argument("--engine-horizon", type=int, default=None, help="Part D: H tokens")


def _random_head(hidden: int, seed: int):
    import mlx.core as mx

    from ..verifier_format import HeadConfig, ValueHead

    mx.random.seed(seed)
    head = ValueHead(HeadConfig(dims=[hidden, 64, 1]))
    mx.eval(head.parameters())
    return head


def _peak_reset():
    import mlx.core as mx

    try:
        mx.reset_peak_memory()
    except AttributeError:  # pragma: no cover - older mlx
        mx.metal.reset_peak_memory()


def _peak_mb() -> float:
    import mlx.core as mx

    try:
        return mx.get_peak_memory() / 2**20
    except AttributeError:  # pragma: no cover
        return mx.metal.get_peak_memory() / 2**20


@dataclass
class ModelRow:
    method: str
    repeat: int
    out_tokens: int
    forward_tokens: int  # generator positions computed (prompt excluded)
    verifier_forward_tokens: int  # separate verifier positions
    steps: int
    wall_s: float
    peak_mb: float
    backtracks: int = 0


def part_a(args, cfg) -> list[ModelRow]:
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler as lm_sampler

    from ..generate import encode_prompt, load
    from ..lm import MLXLanguageModel

    model, tok = load(args.model)
    prompt = encode_prompt(tok, PROMPT)
    H, K, lam = cfg["horizon"], cfg["candidates"], cfg["drift"]
    hidden = model.args.hidden_size
    gen = MLXLanguageModel(model, tok)
    gen_head = MLXLanguageModel(model, tok, value_head=_random_head(hidden, 1))
    ver_lm = MLXLanguageModel(model, tok, value_head=_random_head(hidden, 2))
    head_ver = ValueHeadVerifier(gen_head)
    # its own copy of the backbone and KV cache: V^ costs its own forward
    sep_ver = ValueHeadVerifier(ver_lm, own_lm=True, floor=1e-6)
    rows: list[ModelRow] = []
    # warm-up: compile kernels once for every path
    list(mlx_lm.stream_generate(model, tok, prompt, max_tokens=4, sampler=lm_sampler(temp=1.0)))
    Plain(horizon=4).sample(gen, None, prompt=prompt, seed=0)
    VGB(horizon=4, choice=Candidates(K), drift=lam).sample(gen_head, head_ver, prompt=prompt)
    for r in range(cfg["repeats"]):
        seed = 1000 * args.seed + r
        import mlx.core as mx

        mx.random.seed(seed)
        _peak_reset()
        t0 = time.perf_counter()
        n = 0
        for resp in mlx_lm.stream_generate(
            model, tok, prompt, max_tokens=H, sampler=lm_sampler(temp=1.0)
        ):
            n += 1
        rows.append(ModelRow("mlx_lm plain", r, n, n, 0, n, time.perf_counter() - t0, _peak_mb()))
        for method, sampler, lm, ver in (
            ("plain (ours)", Plain(horizon=H), gen, None),
            (
                "action-rs, head on generator",
                ActionLevelRS(horizon=H, choice=Candidates(K)),
                gen_head,
                head_ver,
            ),
            (
                "vgb, head on generator",
                VGB(horizon=H, choice=Candidates(K), drift=lam),
                gen_head,
                head_ver,
            ),
            (
                "vgb, separate verifier",
                VGB(horizon=H, choice=Candidates(K), drift=lam),
                gen,
                sep_ver,
            ),
            # few backtracks (< 10% of steps, the cost target measured here): a strong drift
            (
                f"vgb, head on generator, K=1, lambda={LOW_BACKTRACK_DRIFT}",
                VGB(horizon=H, choice=Candidates(1), drift=LOW_BACKTRACK_DRIFT),
                gen_head,
                head_ver,
            ),
            (
                f"vgb, head on generator, K={K}, lambda={LOW_BACKTRACK_DRIFT}",
                VGB(horizon=H, choice=Candidates(K), drift=LOW_BACKTRACK_DRIFT),
                gen_head,
                head_ver,
            ),
        ):
            _peak_reset()
            t0 = time.perf_counter()
            res = sampler.sample(lm, ver, prompt=prompt, seed=seed)
            wall = time.perf_counter() - t0
            rows.append(
                ModelRow(
                    method,
                    r,
                    len(res.tokens),
                    lm.positions_computed,
                    ver_lm.positions_computed if ver is sep_ver else 0,
                    res.stats.steps,
                    wall,
                    _peak_mb(),
                    res.stats.backtracks,
                )
            )
        print(f"[perf] model repeat {r} done", flush=True)
    return rows


@dataclass
class ToyRow:
    sweep: str
    horizon: int
    candidates: int | None
    drift: float
    steps_per_token: float
    verifier_evals_per_token: float
    kl_exact: float | None
    us_per_step: float


def part_b(args, cfg) -> list[ToyRow]:
    lm = make_lm("uniform", 0)
    rows: list[ToyRow] = []
    n = cfg["toy_samples"]

    def measure(sweep, H, vhat, choice, lam, kl):
        s = VGB(horizon=H, choice=choice, drift=lam)
        t0 = time.perf_counter()
        res = [s.sample(lm, vhat, seed=10_000 * args.seed + i) for i in range(n)]
        wall = time.perf_counter() - t0
        steps = sum(r.stats.steps for r in res)
        rows.append(
            ToyRow(
                sweep,
                H,
                getattr(choice, "k", None),
                lam,
                steps / (n * H),
                sum(r.stats.verifier_evals for r in res) / (n * H),
                kl,
                1e6 * wall / max(1, steps),
            )
        )

    for H in cfg["toy_horizons"]:
        vhat = MonteCarloValue(lm, no_aa, H, 1000, seed=H + 17 * args.seed)
        pi_star = toy.target(lm, no_aa, H)
        for lam in cfg["toy_drifts"]:
            kl = toy.kl(pi_star, vgb_law(lm, vhat, H, drift=lam))
            measure("drift", H, vhat, Enumerate(), lam, kl)
        for k in cfg["toy_ks"]:
            measure("candidates", H, vhat, Candidates(k), 1.0, None)
        print(f"[perf] toy H={H} done", flush=True)
    return rows


# -- Part C: the per-node work (truncation, draws, crossings) per walk step, before / after ----
NODE_VOCABS = [49_152, 151_936]
NODE_CFG = dict(node_k=8, node_top_ps=[0.95, 1.0], node_steps=30, node_block=4)
NODE_QUICK = dict(node_k=8, node_top_ps=[0.95], node_steps=6, node_block=2)
_BANK_ROWS = 32


class SyntheticLM:
    """Log-probs from a fixed bank of rows (power law over a random token order, exponent
    uniform in [1.2, 3] per row: from flat rows whose 0.95 nucleus holds thousands of tokens to
    peaked ones), one row per prefix by hash. The 'forward' is one gather (time in ``lm_s``)."""

    normalized_logprobs = True
    eos_token_ids: frozenset = frozenset()
    requires_prompt = False

    def __init__(self, vocab: int, seed: int = 0):
        import mlx.core as mx

        rng = np.random.default_rng(seed)
        self.vocab_size = vocab
        ranks = np.argsort(rng.random((_BANK_ROWS, vocab)), axis=1) + 1.0
        expo = rng.uniform(1.2, 3.0, size=(_BANK_ROWS, 1))
        x = -expo * np.log(ranks) + 0.3 * rng.normal(size=ranks.shape)
        x -= np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) + x.max(
            1, keepdims=True
        )
        self.bank = mx.array(x.astype(np.float32))
        mx.eval(self.bank)
        self.lm_s = 0.0

    def begin(self, prompt) -> None:
        pass

    def _rows(self, prefixes):
        import mlx.core as mx

        t0 = time.perf_counter()
        idx = mx.array([hash(tuple(p)) % _BANK_ROWS for p in prefixes])
        out = self.bank[idx]
        _EVAL[0](out)
        self.lm_s += time.perf_counter() - t0
        return out

    def logprobs_mx(self, prefixes):
        return self._rows(prefixes)


class HostLM(SyntheticLM):
    """The same rows through the former path: copied to the host after every forward."""

    logprobs_mx = None

    def logprobs(self, prefixes):
        return np.array(self._rows(prefixes))  # the copy is node work (the former _forward's)


class ConstantValue:
    bound = 1.0

    def begin(self, prompt) -> None:
        pass

    def value(self, prefixes):
        return np.full(len(prefixes), 0.5)

    tilt = value


_EVAL: list = [None]  # the real mx.eval while the timing wrapper is installed


def _host_run_class():
    from ..dist import reference_process
    from ..run import Run

    class HostRun(Run):
        """The former host path: float64 numpy truncation per row, a CDF per draw."""

        def ensure_dists(self, nodes):
            todo = [n for n in dict.fromkeys(nodes) if n.dist is None]
            if not todo:
                return
            out = np.asarray(self.lm.logprobs([n.tokens for n in todo]))
            self.stats.model_calls += 1
            self.stats.forward_tokens += len(todo)
            for n, row in zip(todo, out):
                n.dist = reference_process(row, self.temp, self.top_k, self.top_p)

        def draw(self, requests):
            return [(d.sample(u), None) for d, u in requests]  # a CDF per draw, on the host

    return HostRun


@dataclass
class NodeRow:
    path: str  # "host (before)" or "device (after)"
    top_p: float
    vocab: int
    actions: str
    steps: int
    wall_ms_per_step: float  # walk step, model forward excluded
    host_ms_per_step: float  # of which the host thread, device waits excluded
    device_ms_per_step: float  # time blocked in mx.eval (on this CPU backend: the CPU's work)
    rows_per_step: float  # distributions processed per step


def part_c(args, cfg) -> list[NodeRow]:
    import mlx.core as mx

    from ..actions import Blocks, Tokens
    from ..children import SelfNormalized
    from ..run import Run
    from ..vgb import Walk

    host_run = _host_run_class()
    rows: list[NodeRow] = []
    waited = [0.0]
    real_eval = mx.eval
    _EVAL[0] = real_eval

    def timed_eval(*a):
        t0 = time.perf_counter()
        real_eval(*a)
        waited[0] += time.perf_counter() - t0

    for top_p, v in ((p, v) for p in cfg["node_top_ps"] for v in NODE_VOCABS):
        for actions in (Tokens(), Blocks(cfg["node_block"])):
            for path, lm_cls, run_cls in (
                ("host (before)", HostLM, host_run),
                ("device (after)", SyntheticLM, Run),
            ):
                lm = lm_cls(v, seed=args.seed)
                run = run_cls(
                    lm,
                    ConstantValue(),
                    (),
                    horizon=10**6,
                    actions=actions,
                    top_p=top_p,
                    drift=0.5,
                    seed=args.seed,
                )
                walk = Walk(run, SelfNormalized(cfg["node_k"]))
                walk.step()  # warm-up: kernels, first rows
                lm.lm_s, waited[0] = 0.0, 0.0
                fwd0 = run.stats.forward_tokens
                mx.eval = timed_eval
                try:
                    t0 = time.perf_counter()
                    for _ in range(cfg["node_steps"]):
                        walk.step()
                    wall = time.perf_counter() - t0
                finally:
                    mx.eval = real_eval
                n = cfg["node_steps"]
                work = wall - lm.lm_s
                rows_done = run.stats.forward_tokens - fwd0
                rows.append(
                    NodeRow(
                        path,
                        top_p,
                        v,
                        type(actions).__name__,
                        n,
                        1e3 * work / n,
                        1e3 * (work - waited[0]) / n,
                        1e3 * waited[0] / n,
                        rows_done / n,
                    )
                )
                print(
                    f"[perf] node work top-p {top_p} V={v} {rows[-1].actions} {path}: "
                    f"{rows[-1].wall_ms_per_step:.2f} ms / step",
                    flush=True,
                )
    return rows


def node_table(node_rows: list[NodeRow]) -> list[dict]:
    """Before / after side by side per (top-p, vocabulary, actions), as ratios."""
    out = []
    keys = dict.fromkeys((r.top_p, r.vocab, r.actions) for r in node_rows)
    for key in keys:
        b, d = (
            next(
                r
                for r in node_rows
                if (r.top_p, r.vocab, r.actions) == key and r.path.startswith(p)
            )
            for p in ("host", "device")
        )
        out.append(
            {
                "top-p": key[0],
                "V": key[1],
                "actions": key[2],
                "rows / step": d.rows_per_step,
                "before ms / step": b.wall_ms_per_step,
                "after ms / step": d.wall_ms_per_step,
                "after: host ms": d.host_ms_per_step,
                "after: device ms": d.device_ms_per_step,
                "wall before / after": b.wall_ms_per_step / max(d.wall_ms_per_step, 1e-9),
                "host before / after": b.host_ms_per_step / max(d.host_ms_per_step, 1e-9),
            }
        )
    return out


NODE_NOTE = (
    "A walk step of VGB with SelfNormalized(K = {k}) on synthetic log-probs (no "
    "model: the 'forward' is a gather from a bank of rows, its time excluded). Before: the "
    "former host path (the row copied to the host, float64 numpy truncation per row, a CDF "
    "per draw). After: ``mlx_vgb.dist`` (truncation and draws as MLX ops on the batch; token "
    "ids and their log-probs cross). host ms: the Python thread with the time blocked in "
    "mx.eval taken out; device ms: that blocked time, which on this machine's CPU backend is "
    "the CPU doing the device's work (on a GPU it runs there). Tokens: one new row per step "
    "(the node moved to); Blocks(L): K rows per token of the block."
)


# -- Part D: N VGB walks in the batched engine vs the same N one after another ---------------
ENGINE_PROMPT = "Write a short poem about a cat, one line per verse."
ENGINE_CFG = dict(engine_walks=16, engine_horizon=24, engine_k=4, engine_drift=0.5)
ENGINE_QUICK = dict(engine_walks=3, engine_horizon=6, engine_k=2, engine_drift=0.5)


@dataclass
class EngineRow:
    mode: str  # "one after another", "engine", "mlx_lm plain (one stream)"
    responses: int
    out_tokens: int
    wall_s: float
    peak_mb: float
    steps: int = 0
    backtracks: int = 0
    forwards: int = 0  # model forwards (batched ones count once)
    mean_positions: float = 0.0  # positions (rows x new tokens) per forward


def part_d(args, cfg) -> tuple[list[EngineRow], int]:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler as lm_sampler

    from ..actions import Lines
    from ..children import SelfNormalized
    from ..engine import Engine
    from ..generate import encode_prompt, load
    from ..lm import MLXLanguageModel
    from ..vocab import newline_tokens

    model, tok = load(args.model)
    prompt = encode_prompt(tok, ENGINE_PROMPT)
    head = _random_head(model.args.hidden_size, 1)
    lines = Lines(newline_tokens(tok, model.args.vocab_size).line)
    n, H, K = cfg["engine_walks"], cfg["engine_horizon"], cfg["engine_k"]

    def jobs(count, first=0):
        out = []
        for i in range(first, first + count):
            lm = MLXLanguageModel(model, tok, value_head=head)
            ver = ValueHeadVerifier(lm, floor=1e-6)
            smp = VGB(horizon=H, actions=lines, choice=SelfNormalized(K), drift=cfg["engine_drift"])
            seed = 1000 * args.seed + i
            out.append((lm, lambda s=smp, lm=lm, v=ver, seed=seed: s.sample(lm, v, prompt, seed)))
        return out

    # warm-up: kernels for one row and for batches
    jobs(1)[0][1]()
    Engine().run([j for _, j in jobs(2)])
    rows = []
    _peak_reset()
    mx.random.seed(args.seed)
    t0 = time.perf_counter()
    k = 0
    for _ in mlx_lm.stream_generate(model, tok, prompt, max_tokens=H, sampler=lm_sampler(temp=1.0)):
        k += 1
    rows.append(EngineRow("mlx_lm plain (one stream)", 1, k, time.perf_counter() - t0, _peak_mb()))
    print(f"[perf] engine: plain mlx_lm {k} tokens", flush=True)
    results = {}
    for mode in ("one after another", "engine"):
        _peak_reset()
        t0 = time.perf_counter()
        if mode == "engine":
            js = jobs(n)
            eng = Engine()
            res = eng.run([j for _, j in js])
            fwd, peak = eng.stats.forwards, _peak_mb()
            positions = sum(lm.positions_computed for lm, _ in js)
        else:  # each walk's model state made before it and dropped after: one walk's peak
            res, fwd, positions, peak = [], 0, 0, 0.0
            for i in range(n):
                _peak_reset()
                ((lm, j),) = jobs(1, first=i)
                res.append(j())
                fwd, positions = fwd + lm.forward_calls, positions + lm.positions_computed
                peak = max(peak, _peak_mb())
                del lm, j
        mean = positions / max(1, fwd)
        wall = time.perf_counter() - t0
        results[mode] = res
        rows.append(
            EngineRow(
                mode,
                n,
                sum(len(r.tokens) for r in res),
                wall,
                peak,
                sum(r.stats.steps for r in res),
                sum(r.stats.backtracks for r in res),
                fwd,
                mean,
            )
        )
        print(f"[perf] engine: {mode} {wall:.1f} s", flush=True)
    same = sum(a.tokens == b.tokens for a, b in zip(*results.values()))
    # the headroom batching has on this machine: rows per second of one forward at the engine's
    # mean batch vs at one walk's (what the forwards alone allow the engine to gain)
    ctx = len(prompt) + H // 2
    b_one = max(1, round(rows[1].mean_positions))
    b_eng = max(b_one, round(rows[2].mean_positions))
    t_one, t_eng = _forward_s(model, ctx, b_one), _forward_s(model, ctx, b_eng)
    headroom = dict(
        rows_one_walk=b_one,
        rows_engine=b_eng,
        forward_s_one_walk=t_one,
        forward_s_engine=t_eng,
        rows_per_s_gain=(b_eng / t_eng) / (b_one / t_one),
    )
    print(f"[perf] engine: forward headroom {headroom}", flush=True)
    return rows, same, headroom


def _forward_s(model, context: int, rows: int, repeats: int = 5) -> float:
    """Seconds of one single-token forward of ``rows`` rows after ``context`` cached tokens."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    mx.eval(model(mx.zeros((rows, context), dtype=mx.int32), cache=cache))
    tok = mx.zeros((rows, 1), dtype=mx.int32)
    mx.eval(model(tok, cache=cache))  # warm-up at this shape
    t0 = time.perf_counter()
    for _ in range(repeats):
        mx.eval(model(tok, cache=cache))
    return (time.perf_counter() - t0) / repeats


def write_engine(args, cfg, rows: list[EngineRow], same: int, headroom: dict) -> None:
    rep = Report(task="perf", command=args.command, config=cfg)
    rep.rows = [asdict(r) for r in rows]
    plain, seq, eng = rows
    summary = {
        "responses_per_s_engine_over_one_after_another": (eng.responses / eng.wall_s)
        / (seq.responses / seq.wall_s),
        "out_tokens_per_s_engine_over_plain_mlx_lm": (eng.out_tokens / eng.wall_s)
        / (plain.out_tokens / plain.wall_s),
        "peak_memory_engine_over_one_walk": eng.peak_mb / max(seq.peak_mb, 1e-9),
        "same_tokens_alone_and_batched": f"{same} of {eng.responses}",
        "backtracks_per_step": eng.backtracks / max(1, eng.steps),
        "forward_rows_per_s_at_engine_batch_over_one_walk_batch": headroom["rows_per_s_gain"],
    }
    rep.summary = summary
    table = [
        {
            "mode": r.mode,
            "responses": r.responses,
            "out tokens": r.out_tokens,
            "wall s": r.wall_s,
            "responses / s": r.responses / r.wall_s,
            "out tokens / s": r.out_tokens / r.wall_s,
            "forwards": r.forwards,
            "positions / forward": r.mean_positions,
            "steps": r.steps,
            "backtracks": r.backtracks,
            "peak MB": r.peak_mb,
        }
        for r in rows
    ]
    rep.add_section(
        "Part D: N VGB walks in the engine vs one after another",
        markdown_table(table)
        + "\n"
        + "\n".join(f"- {k}: {v if isinstance(v, str) else f'{v:.3g}'}" for k, v in summary.items())
        + f"\n\nVGB, SelfNormalized(K = {cfg['engine_k']}), line blocks, drift "
        f"{cfg['engine_drift']}, H = {cfg['engine_horizon']} tokens, a random value head on "
        "the generator (V^ from the same forward; cost only), prompt "
        f"{ENGINE_PROMPT!r}. One after another: each walk alone (its own batched K-row "
        "forwards). Engine: all walks' forwards of a step in one batched forward. Peak memory: "
        "MLX's peak allocation (one after another: the largest of one walk's; engine: all "
        f"{cfg['engine_walks']} walks' model state at once).\n\n"
        f"Headroom: one single-token forward of {headroom['rows_engine']} rows (the engine's "
        f"mean batch) takes {headroom['forward_s_engine'] * 1e3:.1f} ms here, of "
        f"{headroom['rows_one_walk']} rows (one walk's) {headroom['forward_s_one_walk'] * 1e3:.1f}"
        f" ms: batching raises rows per second by {headroom['rows_per_s_gain']:.2f}x on this "
        "machine, which bounds what the engine can gain over walks one after another (their "
        "forwards are already K-row batches).",
    )
    rep.write(Path(args.out))


def write_node(args, cfg, node_rows: list[NodeRow]) -> None:
    rep = Report(task="perf", command=args.command, config=cfg)
    rep.rows = [asdict(r) for r in node_rows]
    table = node_table(node_rows)
    rep.summary = {"node_work": table}
    rep.add_section(
        "Part C: per-node work per walk step, before / after",
        markdown_table(table) + "\n" + NODE_NOTE.format(k=cfg["node_k"]),
    )
    rep.write(Path(args.out))


def run(args) -> None:
    if args.part == "engine":
        from .report import default_out

        if Path(args.out) == default_out("perf", args.quick):
            args.out = Path(args.out) / "engine"
        cfg = dict(ENGINE_QUICK if args.quick else ENGINE_CFG)
        for k in ("engine_walks", "engine_horizon"):
            if getattr(args, k, None) is not None:
                cfg[k] = getattr(args, k)
        cfg.update(seed=args.seed, model=args.model or "embedded SmolLM2")
        write_engine(args, cfg, *part_d(args, cfg))
        return
    if args.part == "node":
        from .report import default_out

        if Path(args.out) == default_out("perf", args.quick):
            args.out = Path(args.out) / "node-work"
        cfg = dict(NODE_QUICK if args.quick else NODE_CFG)
        cfg.update(seed=args.seed, vocabularies=NODE_VOCABS)
        write_node(args, cfg, part_c(args, cfg))
        return
    cfg = settings(args, FULL, QUICK, ("horizon", "candidates", "drift", "repeats", "toy_samples"))
    cfg.update(
        seed=args.seed,
        model=args.model or "embedded SmolLM2",
        prompt=PROMPT,
        value_heads="random MLP [hidden, 64, 1] (cost only)",
    )
    toy_rows = part_b(args, cfg)
    model_rows = part_a(args, cfg)
    write(args, cfg, model_rows, toy_rows)


def write(args, cfg, model_rows: list[ModelRow], toy_rows: list[ToyRow]) -> None:
    out = Path(args.out)
    rep = Report(task="perf", command=args.command, config=cfg)
    rep.rows = [asdict(r) for r in model_rows] + [asdict(r) for r in toy_rows]
    methods = list(dict.fromkeys(r.method for r in model_rows))

    def per_tok(rs, f):
        return sum(f(r) for r in rs) / max(1, sum(r.out_tokens for r in rs))

    base = per_tok([r for r in model_rows if r.method == "mlx_lm plain"], lambda r: r.wall_s)
    table = []
    for m in methods:
        rs = [r for r in model_rows if r.method == m]
        table.append(
            {
                "method": m,
                "responses": len(rs),
                "out tokens": sum(r.out_tokens for r in rs),
                "generator fwd / out tok": per_tok(rs, lambda r: r.forward_tokens),
                "verifier fwd / out tok": per_tok(rs, lambda r: r.verifier_forward_tokens),
                "steps / out tok": per_tok(rs, lambda r: r.steps),
                "backtracks / step": sum(r.backtracks for r in rs)
                / max(1, sum(r.steps for r in rs)),
                "wall / out tok vs mlx_lm": per_tok(rs, lambda r: r.wall_s) / max(base, 1e-12),
                "peak memory vs mlx_lm": (
                    max(r.peak_mb for r in rs)
                    / max(max(x.peak_mb for x in model_rows if x.method == "mlx_lm plain"), 1e-9)
                ),
            }
        )
    # Python overhead per walk step (toy, model free) vs one model forward token (plain, ours)
    us_step = float(np.median([r.us_per_step for r in toy_rows]))
    plain = [r for r in model_rows if r.method == "plain (ours)"]
    fwd_s = sum(r.wall_s for r in plain) / max(1, sum(r.forward_tokens for r in plain))
    overhead = us_step * 1e-6 / max(fwd_s, 1e-12)
    rep.summary = {
        "model": {t["method"]: {k: v for k, v in t.items() if k != "method"} for t in table},
        "python_overhead_per_step_over_model_forward": overhead,
    }
    rep.add_section("Setup", (__doc__ or "").split("\n", 1)[1].strip())
    rep.add_section(
        "Part A: SmolLM2, per output token, relative to mlx_lm in the same run",
        markdown_table(table) + f"\nH = {cfg['horizon']}, K = {cfg['candidates']}, "
        f"lambda = {cfg['drift']} for the walks; {cfg['repeats']} response(s) per method. "
        "Peak memory is MLX's peak allocation during the response (CPU backend here).",
    )
    rep.add_section(
        "Python overhead per walk step",
        f"Median {us_step:.0f} us per walk step on the toy (no model cost: prefix store, "
        f"sampling, bookkeeping), which is {overhead:.3g} x one model forward of one token here.",
    )
    tb = [asdict(r) for r in toy_rows]
    rep.add_section(
        "Part B: toy, cost vs H and lambda (Enumerate) and quality at each lambda",
        markdown_table(
            [r for r in tb if r["sweep"] == "drift"],
            ["horizon", "drift", "steps_per_token", "verifier_evals_per_token", "kl_exact"],
            digits=4,
        )
        + "\nkl_exact: exact KL(pi* || law of the practical walk's first leaf) with "
        "the learned V^ (N = 1000).",
    )
    rep.add_section(
        "Part B: toy, cost vs K (Candidates(K), lambda = 1)",
        markdown_table(
            [r for r in tb if r["sweep"] == "candidates"],
            ["horizon", "candidates", "steps_per_token", "verifier_evals_per_token"],
            digits=3,
        ),
    )
    hs = cfg["toy_horizons"]
    series = []
    for lam in cfg["toy_drifts"]:
        rs = [r for r in toy_rows if r.sweep == "drift" and r.drift == lam]
        series.append(
            {
                "label": f"lambda={lam:g}",
                "x": [r.horizon for r in rs],
                "y": [r.steps_per_token for r in rs],
            }
        )
    plot_lines(
        out / "steps_vs_horizon.png",
        series,
        xlabel="horizon H",
        ylabel="walk steps per output token",
        title="Toy: cost vs H and drift",
    )
    series = []
    for H in hs:
        rs = [r for r in toy_rows if r.sweep == "drift" and r.horizon == H]
        series.append(
            {"label": f"H={H}", "x": [r.drift for r in rs], "y": [r.kl_exact for r in rs]}
        )
    plot_lines(
        out / "kl_vs_drift.png",
        series,
        xlabel="drift lambda",
        ylabel="KL(pi* || output law)",
        title="Toy: quality vs drift (learned V^)",
    )
    series = []
    for H in hs:
        rs = [r for r in toy_rows if r.sweep == "candidates" and r.horizon == H]
        series.append(
            {
                "label": f"H={H}",
                "x": [r.candidates for r in rs],
                "y": [r.verifier_evals_per_token for r in rs],
            }
        )
    plot_lines(
        out / "evals_vs_k.png",
        series,
        xlabel="K candidates",
        ylabel="V^ evaluations per output token",
        title="Toy: cost vs K",
    )
    rep.plots = ["steps_vs_horizon.png", "kl_vs_drift.png", "evals_vs_k.png"]
    rep.write(out)
