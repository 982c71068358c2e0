"""Tabular toys to run the theory: a language model given by a table, exact / perturbed /
delayed value functions, and pi* by enumeration (the samplers' exact laws: ``mlx_vgb.laws``).

Everything here enumerates the tree, so keep vocab_size ** horizon small (say <= 1e5).
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from .protocols import BaseLanguageModel, BaseVerifier

Tilt = Callable[[tuple[int, ...]], float]


class TabularLM(BaseLanguageModel):
    """pi_ref(. | prefix) = ``table(prefix)`` (a probability vector over ``vocab_size`` tokens).

    ``eos_token_id`` (optional) ends a response early. The prompt is ignored.
    """

    requires_prompt = False

    def __init__(
        self,
        vocab_size: int,
        table: Callable[[tuple[int, ...]], Sequence[float]],
        eos_token_id: int | None = None,
        names: str | None = None,
    ):
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset() if eos_token_id is None else frozenset({eos_token_id})
        self._table = lru_cache(maxsize=None)(lambda p: np.asarray(table(p), dtype=np.float64))
        self.names = names
        self.calls = 0  # batched calls
        self.prefixes_seen: list[tuple[int, ...]] = []

    def probs(self, prefix: Sequence[int]) -> np.ndarray:
        return self._table(tuple(prefix))

    def logprobs(self, prefixes):
        self.calls += 1
        out = np.empty((len(prefixes), self.vocab_size))
        for i, p in enumerate(prefixes):
            p = tuple(p)
            self.prefixes_seen.append(p)
            with np.errstate(divide="ignore"):
                out[i] = np.log(self.probs(p))
        return out

    def decode(self, tokens: Sequence[int]) -> str:
        if self.names is None:
            return " ".join(map(str, tokens))
        return "".join(self.names[t] for t in tokens)

    @classmethod
    def uniform(cls, vocab_size: int, **kw) -> "TabularLM":
        return cls(vocab_size, lambda p: np.full(vocab_size, 1 / vocab_size), **kw)

    @classmethod
    def random(
        cls,
        vocab_size: int,
        seed: int = 0,
        concentration: float = 1.0,
        eos_token_id: int | None = None,
        eos_prob: float = 0.0,
        **kw,
    ) -> "TabularLM":
        """Dirichlet(concentration) next-token tables, a fixed function of (seed, prefix).
        With ``eos_token_id``, that token gets probability ``eos_prob`` at every prefix."""

        def table(p):
            h = hashlib.sha256(repr((seed, p)).encode()).digest()
            r = np.random.default_rng(int.from_bytes(h[:8], "little"))
            q = r.dirichlet(np.full(vocab_size, concentration))
            if eos_token_id is not None:
                q[eos_token_id] = 0
                q = q / q.sum() * (1 - eos_prob)
                q[eos_token_id] = eos_prob
            return q

        return cls(vocab_size, table, eos_token_id=eos_token_id, **kw)


def leaves(lm: TabularLM, horizon: int) -> dict[tuple[int, ...], float]:
    """pi_ref of every complete response (EOS or ``horizon`` tokens)."""
    out: dict[tuple[int, ...], float] = {}

    def rec(prefix, p):
        if len(prefix) == horizon or (prefix and prefix[-1] in lm.eos_token_ids):
            out[prefix] = out.get(prefix, 0.0) + p
            return
        for a, q in enumerate(lm.probs(prefix)):
            if q > 0:
                rec(prefix + (a,), p * q)

    rec((), 1.0)
    return out


def target(lm: TabularLM, tilt: Tilt, horizon: int) -> dict[tuple[int, ...], float]:
    """pi*(y) proportional to pi_ref(y) * tau(y), by enumeration."""
    w = {y: p * tilt(y) for y, p in leaves(lm, horizon).items()}
    z = sum(w.values())
    if z <= 0:
        raise ValueError("tau is zero on every response")
    return {y: v / z for y, v in w.items() if v > 0}


def tv(p: dict, q: dict) -> float:
    """Total-variation distance of two distributions given as dicts."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def kl(p: dict, q: dict, floor: float = 1e-12) -> float:
    """KL(p || q) with q floored (empirical q may miss outcomes)."""
    return sum(v * math.log(v / max(q.get(k, 0.0), floor)) for k, v in p.items() if v > 0)


def empirical(samples: Sequence) -> dict:
    out: dict = {}
    for s in samples:
        out[s] = out.get(s, 0) + 1
    n = len(samples)
    return {k: v / n for k, v in out.items()}


class ExactValue(BaseVerifier):
    """V*(s) = E_{pi_ref}[tau | s] by enumeration; tilt = tau."""

    def __init__(self, lm: TabularLM, tilt: Tilt, horizon: int):
        self.lm, self._tilt, self.horizon = lm, tilt, horizon
        self.bound = 1.0
        self.calls = 0
        self.exact = lru_cache(maxsize=None)(self._v)

    def _v(self, prefix: tuple[int, ...]) -> float:
        if len(prefix) == self.horizon or (prefix and prefix[-1] in self.lm.eos_token_ids):
            return float(self._tilt(prefix))
        return float(
            sum(q * self.exact(prefix + (a,)) for a, q in enumerate(self.lm.probs(prefix)) if q > 0)
        )

    def value(self, prefixes):
        self.calls += 1
        return np.array([self.exact(tuple(p)) for p in prefixes])

    def tilt(self, responses):
        self.calls += 1
        return np.array([float(self._tilt(tuple(r))) for r in responses])


class PerturbedValue(ExactValue):
    """V^ = (1 + eps) V* at internal prefixes whose last token is ``action`` (paper Example 3.1);
    tau exact at leaves. ``bound`` is raised to (1 + eps) * max tau."""

    def __init__(self, lm, tilt, horizon, eps: float, action: int):
        super().__init__(lm, tilt, horizon)
        self.eps, self.action = eps, action
        self.bound = 1.0 + max(eps, 0.0)

    def value(self, prefixes):
        v = super().value(prefixes)
        hit = np.array([len(p) > 0 and p[-1] == self.action for p in prefixes], dtype=bool)
        return np.where(hit, v * (1 + self.eps), v)


class RandomlyPerturbedValue(ExactValue):
    """V^ = f(s) V*(s) at internal prefixes, f log-uniform in [1 / factor, factor] (a fixed
    function of (seed, prefix)); tau exact at leaves. ``bound`` = factor (for tau, V* <= 1)."""

    def __init__(self, lm, tilt, horizon, factor: float = 3.0, seed: int = 0):
        super().__init__(lm, tilt, horizon)
        self.factor, self.seed = factor, seed
        self.bound = max(1.0, factor)

    def _f(self, prefix) -> float:
        h = hashlib.sha256(repr(("perturb", self.seed, tuple(prefix))).encode()).digest()
        u = int.from_bytes(h[:8], "little") / 2**64
        return self.factor ** (2 * u - 1)

    def value(self, prefixes):
        v = super().value(prefixes)
        return v * np.array([self._f(p) for p in prefixes])


class DelayedValue(ExactValue):
    """V^(y_1..h) = V*(y_1..h-1): the value of the parent, one step late (paper Example 3.2)."""

    def value(self, prefixes):
        self.calls += 1
        return np.array([self.exact(tuple(p)[:-1]) for p in prefixes])
