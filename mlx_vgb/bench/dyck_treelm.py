"""``MemoTreeLM`` with what the Dyck Fig. 1 and fidelity benches need on top: a per-run cap on
forward tokens, and switchable value heads that reuse every forward.

Costs of a run, as the benches count them:
- *LM queries*: distinct prefixes whose next-token distribution pi_ref(.|s) the run asked for
  (``SampleStats.forward_tokens``; the count of the precursor, LM_Query_Complexity);
- *forward tokens*: distinct prefixes whose pi_ref or V^ it asked for (``run_cost``: with the
  head on the generator's hidden states each is one token forward; a verifier-only prefix, e.g.
  a candidate block end, costs one too);
- *walk steps*: ``SampleStats.steps`` (one action per step for the forward samplers).
``cap``: a run that asks for more than ``cap`` distinct prefixes is stopped (``BudgetExhausted``:
the run ends unfinished), so a walk that wanders does not run forever.

Heads: the hidden state of every expanded prefix is kept (64 floats), so ``set_head`` switches to
another head without a forward; values under a new head are computed from the kept states.
(Full-sequence forwards with look-ahead were tried instead of the cached one-token forwards: on
this CPU a 7 x 34 forward costs ~7 ms against ~3 ms for a cached one, so the cached path stays.)
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from ..run import BudgetExhausted
from ..tasks import dyck
from .memo_lm import MemoTreeLM


class _Tap:
    """A head that remembers the hidden states it was last called on."""

    def __init__(self, head):
        self.inner, self.last = head, None

    def __call__(self, h):
        self.last = h
        return self.inner(h)


class DyckTreeLM(MemoTreeLM):
    def __init__(self, model, head, eos_token_ids: Sequence[int] = (dyck.EOS,)):
        super().__init__(model, _Tap(head), eos_token_ids)
        self._h: dict[tuple[int, ...], np.ndarray] = {}
        self._vals: dict[int, dict] = {id(head): self._val}
        self.cap: int | None = None

    def set_head(self, head) -> None:
        """Value prefixes with ``head`` from now on (a new head starts with no values)."""
        if self._memo is not self:
            raise ValueError("set_head on the memo, not on a view: the views share its head")
        self.head.inner = head
        self._val = self._vals.setdefault(id(head), {})

    def begin(self, prompt: Sequence[int]) -> None:
        new = tuple(int(t) for t in prompt) != self._prompt
        super().begin(prompt)
        if new:
            self._vals = {id(self.head.inner): self._val}
            h = np.array(self.head.last.astype(mx.float32))[0]
            self._h = {self._prompt[: i + 1]: h[i] for i in range(len(self._prompt))}

    def _compute(self, fulls: list[tuple[int, ...]]) -> None:
        super()._compute(fulls)
        h = np.array(self.head.last.astype(mx.float32)).reshape(len(fulls), -1)
        for r, f in enumerate(fulls):
            self._h[f] = h[r]

    def _full(self, prefixes) -> list[tuple[int, ...]]:
        fulls = super()._full(prefixes)
        if self.cap is not None and len(self._asked) > self.cap:
            raise BudgetExhausted
        return fulls

    def values(self, prefixes) -> np.ndarray:
        fulls = self._full(prefixes)
        need = [f for f in dict.fromkeys(fulls) if f not in self._val]
        if need:  # expanded under another head: this head on the kept hidden states
            out = np.array(self.head.inner(mx.array(np.stack([self._h[f] for f in need]))))
            for f, v in zip(need, out.reshape(-1)):
                self._val[f] = float(v)
        return np.array([self._val[f] for f in fulls], dtype=np.float64)

    @property
    def prefixes_stored(self) -> int:
        return len(self._logp)
