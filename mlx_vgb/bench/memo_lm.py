"""pi_ref and V^ of a small-vocabulary model with a value head, memoized across every run on one
prompt (the Dyck benchmark's engine)."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache, make_prompt_cache

from ..protocols import BaseLanguageModel


class MemoTreeLM(BaseLanguageModel):
    """Not ``MLXLanguageModel``: that engine's caches live for one run, this one memoizes every
    prefix across all the runs on a prompt, so 60 methods cost the forwards of one.

    ``LanguageModel`` over an mlx-lm model with a value head on its last hidden state.

    A prefix s.a is computed when it is first asked about: its last token a in one forward over
    the KV cache of s (rebuilt from the per-token keys / values stored with each computed
    prefix), which gives pi_ref(.|s.a), V^(s.a) and the keys / values of a; the prefixes asked
    at once are computed together, one batched forward per length (parents first). Only asked
    prefixes are computed: expanding every child of a parent instead (all V tokens at once)
    computed 4.5-6.7x as many rows as the Fig. 1 grid asks about on the 7-token Dyck
    vocabulary, and ~96% of its time was those forwards. Results are kept for all runs on the
    same prompt, so the wall time of a benchmark does not grow with the number of methods;
    what each run *would* cost is counted separately: ``run_cost`` is the number of distinct
    prefixes a run asked about (logprobs or value), i.e. its model forward tokens.
    ``expansions``: batched forwards so far; ``rows``: prefixes computed by them.
    """

    requires_prompt = True

    def __init__(self, model, head, eos_token_ids: Sequence[int]):
        self.model, self.head = model, head
        self.inner = model.model
        args = model.args
        self.vocab_size = int(args.vocab_size)
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self._tied = getattr(args, "tie_word_embeddings", True)
        self._prompt: tuple[int, ...] | None = None
        self._kv: dict[tuple[int, ...], np.ndarray] = {}
        self._logp: dict[tuple[int, ...], np.ndarray] = {}
        self._val: dict[tuple[int, ...], float] = {}
        self._asked: set[tuple[int, ...]] = set()
        self.expansions = 0
        self.rows = 0

    def _readout(self, h: mx.array) -> tuple[np.ndarray, np.ndarray]:
        logits = self.inner.embed_tokens.as_linear(h) if self._tied else self.model.lm_head(h)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        v = self.head(h)
        return np.array(logp.astype(mx.float32)), np.array(v.astype(mx.float32))

    def begin(self, prompt: Sequence[int]) -> None:
        prompt = tuple(int(t) for t in prompt)
        self._asked = set()
        if prompt == self._prompt:
            return
        self._prompt = prompt
        self._kv, self._logp, self._val = {}, {}, {}
        cache = make_prompt_cache(self.model)
        h = self.inner(mx.array([list(prompt)]), cache=cache)
        logp, v = self._readout(h)
        k = np.stack([np.array(c.keys[0, :, : len(prompt), :]) for c in cache])
        vv = np.stack([np.array(c.values[0, :, : len(prompt), :]) for c in cache])
        for i in range(len(prompt)):
            key = prompt[: i + 1]
            self._kv[key] = np.stack([k[:, :, i], vv[:, :, i]], axis=1)  # (layers, 2, heads, hd)
            self._logp[key] = logp[0, i]
            self._val[key] = float(v[0, i])

    @property
    def run_cost(self) -> int:
        return len(self._asked)

    def _ensure(self, fulls: Sequence[tuple[int, ...]]) -> None:
        missing = {f for f in fulls if f not in self._logp}
        if not missing:
            return
        self._ensure([f[:-1] for f in missing])  # the parents' keys / values first
        by_len: dict[int, list[tuple[int, ...]]] = {}
        for f in missing:
            if f in self._logp:  # a parent of another one: computed just now
                continue
            by_len.setdefault(len(f), []).append(f)
        for n, fs in sorted(by_len.items()):
            self._compute(sorted(fs), n - 1)

    def _compute(self, fulls: list[tuple[int, ...]], T: int) -> None:
        """pi_ref, V^ and the last token's keys / values of each of ``fulls`` (length T + 1,
        their parents computed), in one batched forward."""
        kv = np.stack([np.stack([self._kv[f[: i + 1]] for i in range(T)]) for f in fulls])
        kv = kv.transpose(2, 3, 0, 4, 1, 5)  # (layers, 2, n, heads, T, hd)
        caches = [
            _PathCache(mx.array(np.ascontiguousarray(k)), mx.array(np.ascontiguousarray(v)), T)
            for k, v in kv
        ]
        toks = np.array([[f[-1]] for f in fulls], dtype=np.int32)
        h = self.inner(mx.array(toks), cache=caches)
        logits = self.inner.embed_tokens.as_linear(h) if self._tied else self.model.lm_head(h)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        new = mx.stack(
            [mx.stack([c.new_k[:, :, 0], c.new_v[:, :, 0]], axis=1) for c in caches], axis=1
        )  # (n, layers, 2, heads, hd)
        out = mx.concatenate(
            [
                logp[:, 0].astype(mx.float32),
                self.head(h)[:, :1].astype(mx.float32),
                new.reshape(len(fulls), -1).astype(mx.float32),
            ],
            axis=1,
        )
        out = np.array(out)
        V = self.vocab_size
        logp_np, v_np = out[:, :V], out[:, V]
        new_np = out[:, V + 1 :].reshape((len(fulls),) + tuple(new.shape[1:]))
        for r, f in enumerate(fulls):
            self._kv[f], self._logp[f], self._val[f] = new_np[r], logp_np[r], float(v_np[r])
        self.expansions += 1
        self.rows += len(fulls)

    def _full(self, prefixes) -> list[tuple[int, ...]]:
        fulls = [self._prompt + tuple(int(t) for t in p) for p in prefixes]
        self._ensure(fulls)
        self._asked.update(fulls)
        return fulls

    def logprobs(self, prefixes):
        return np.stack([self._logp[f] for f in self._full(prefixes)]).astype(np.float64)

    def values(self, prefixes) -> np.ndarray:
        return np.array([self._val[f] for f in self._full(prefixes)], dtype=np.float64)


class _PathCache(KVCache):
    """The KV cache of one prefix (given whole); keeps the new token's keys / values apart."""

    def __init__(self, keys: mx.array, values: mx.array, offset: int):
        super().__init__()
        self.keys, self.values, self.offset = keys, values, offset

    def update_and_fetch(self, keys, values):
        self.new_k, self.new_v = keys, values
        self.offset += keys.shape[2]
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate(
            [self.values, values], axis=2
        )
