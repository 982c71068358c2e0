"""Explicit-key randomness: every decision of a sampler comes from one MLX PRNG key.

Uniforms are drawn from ``mx.random`` in chunks (two 24-bit integers per uniform, 48 bits of
resolution) and consumed in order, so the same seed gives the same walk on every platform and
per-decision cost stays in microseconds.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

_CHUNK = 4096
_TWO24 = float(1 << 24)


class KeyedRNG:
    """A stream of uniforms in [0, 1) from ``mx.random.key(seed)``."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._key = mx.random.key(self.seed)
        self._buf = np.empty(0)
        self._pos = 0

    def _refill(self) -> None:
        self._key, sub = mx.random.split(self._key)
        ints = np.array(mx.random.randint(0, 1 << 24, (2, _CHUNK), dtype=mx.int32, key=sub))
        self._buf = (ints[0].astype(np.float64) * _TWO24 + ints[1]) / (_TWO24 * _TWO24)
        self._pos = 0

    def uniform(self, n: int | None = None):
        """One uniform (``n=None``) or an array of ``n`` uniforms."""
        k = 1 if n is None else n
        if self._pos + k > self._buf.size:
            if k > _CHUNK:
                return np.concatenate([self.uniform(_CHUNK), self.uniform(k - _CHUNK)])
            self._refill()
        out = self._buf[self._pos : self._pos + k]
        self._pos += k
        return float(out[0]) if n is None else out.copy()

    def bernoulli(self, p: float) -> bool:
        return self.uniform() < p

    def choice_logweights(self, logw: np.ndarray) -> int:
        """Index i with probability exp(logw[i]) / sum exp(logw). Needs one finite entry."""
        m = np.max(logw)
        w = np.exp(logw - m)
        c = np.cumsum(w)
        i = int(np.searchsorted(c, self.uniform() * c[-1], side="right"))
        return min(i, len(c) - 1)
