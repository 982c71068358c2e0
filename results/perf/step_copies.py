"""One batched engine step of the 0.5B coder (24 rows, KV caches of 250-650 positions, one new
token each), with the engine's KV copies as they were at c6e091a (each run's entries padded, then
concatenated into the batch: two copies; its rows copied back whole) and as they are now (one
copy in, only the new positions back, in place), side by side, alternating, 4 steps each (the
first of each not counted). Prints seconds per step, their ratio, and whether the log-probs of
every step are identical.

Run from the repository root: .venv/bin/python results/perf/step_copies.py
2026-12-08, beside three bench jobs on this 2-core CPU: 13.25 against 12.69 s/step (ratio 1.044),
then 13.30 against 12.36 (1.076), identical log-probs both times.
"""

import statistics
import subprocess
import textwrap
import time

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache  # noqa: F401 - the old code's names

import mlx_vgb._blas  # noqa: F401 - OpenBLAS
from mlx_vgb.engine import Engine, _arrays, _Request  # noqa: F401
from mlx_vgb.generate import load
from mlx_vgb.lm import MLXLanguageModel

OLD = subprocess.run(
    ["git", "show", "c6e091a:mlx_vgb/engine.py"], capture_output=True, text=True, check=True
).stdout


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i : text.index(end, i)]


ns: dict = {}
exec(_between(OLD, "def _padded(", "def run_many("), globals())
exec(
    textwrap.dedent(_between(OLD, "    def _batched_forward(", "    @staticmethod")), globals(), ns
)


class OldEngine(Engine):
    _batched_forward = ns["_batched_forward"]


def main() -> None:
    model, tok = load("qwen2.5-coder-0.5b")
    a = model.args
    L, H = a.num_hidden_layers, a.num_key_value_heads
    D = a.hidden_size // a.num_attention_heads
    rng = np.random.default_rng(0)
    R = 24
    lens = [int(x) for x in rng.integers(250, 650, R)]
    base = []
    for n in lens:
        row = []
        for _ in range(L):
            c = KVCache()
            c.keys = mx.random.normal((1, H, n, D)) * 0.1
            c.values = mx.random.normal((1, H, n, D)) * 0.1
            c.offset = n
            row.append(c)
        base.append(row)
    mx.eval([x for cs in base for c in cs for x in (c.keys, c.values)])

    def copied():
        out = []
        for cs in base:
            row = []
            for c in cs:
                d = KVCache()
                d.keys, d.values, d.offset = c.keys + 0, c.values + 0, c.offset
                row.append(d)
            out.append(row)
        return out

    lm = MLXLanguageModel(model, tok)
    toks = [mx.array([[int(rng.integers(100, 20000))]]) for _ in range(R)]
    state = {E: copied() for E in ("OldEngine", "Engine")}
    res: dict = {"OldEngine": [], "Engine": []}
    logps: dict = {"OldEngine": [], "Engine": []}
    for rep in range(4):
        for E in (OldEngine, Engine):
            reqs = [
                _Request(0, 1, lm=lm, tokens=t, cache=c) for t, c in zip(toks, state[E.__name__])
            ]
            t0 = time.perf_counter()
            E()._batched_forward(reqs)
            mx.eval([r.result[0] for r in reqs])
            dt = time.perf_counter() - t0
            res[E.__name__].append(dt)
            logps[E.__name__].append(np.array(mx.concatenate([r.result[0] for r in reqs], 0)))
            print(E.__name__, rep, round(dt, 3), flush=True)
    med = {k: statistics.median(v[1:]) for k, v in res.items()}
    for k, v in med.items():
        print(k, "median s/step", round(v, 3))
    print("ratio old/new", round(med["OldEngine"] / med["Engine"], 3))
    same = all(np.array_equal(x, y) for x, y in zip(logps["OldEngine"], logps["Engine"]))
    print("identical log-probs every step:", same)


if __name__ == "__main__":
    main()
