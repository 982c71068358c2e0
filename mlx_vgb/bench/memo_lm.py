"""pi_ref and V^ of a small-vocabulary model with a value head, memoized across every run on one
prompt (the Dyck benchmark's engine)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import KVCache, make_prompt_cache

from .. import engine
from ..protocols import BaseLanguageModel

# the key / value pool grows in chunks of this many bytes: storing never copies what is stored
# (doubling one array held old and new at once: 3x the pool for a moment, GBs at stage B's 8 KB
# a token once its whole sequences store a few hundred thousand prefixes)
CHUNK_BYTES = 64 << 20


class MemoTreeLM(BaseLanguageModel):
    """Not ``MLXLanguageModel``: that engine's caches live for one run, this one memoizes every
    prefix across all the runs on a prompt, so 60 methods cost the forwards of one.

    ``LanguageModel`` over an mlx-lm model with a value head on its last hidden state.

    A prefix s.a is computed when it is first asked about: its last token a in one forward over the
    KV cache of s (the keys / values of every computed token are kept in one pool, grown in chunks,
    and a prefix's cache is gathered from its path of pool rows), which gives pi_ref(.|s.a), V^(s.a)
    and the keys / values of a. The prefixes asked at once are computed together: one batched
    forward per wave (the prefixes whose parents are known; lengths mixed, each row's cache
    left-padded to the longest and the padding masked). Only asked prefixes are computed: expanding
    every child of a parent instead (all V tokens at once) computed 4.5-6.7x as many rows as the
    Fig. 1 grid asks about on the 7-token Dyck vocabulary, and ~96% of its time was those forwards.
    Results are kept for all runs on the same prompt, so the wall time of a benchmark does not grow
    with the number of methods; what each run *would* cost is counted separately: ``run_cost`` is
    the number of distinct prefixes a run asked about (logprobs or value), i.e. its model forward
    tokens. ``expansions``: batched forwards so far; ``rows``: prefixes computed by them.

    Concurrent runs (``view``): each run gets a view with its own ``run_cost``, the memo shared;
    run in an ``mlx_vgb.engine.Engine``, the runs' memo misses wait for each other and are
    computed together (``Engine.call``). A run's samples are those it draws alone (its
    randomness is its own seed's), up to float rounding between batch sizes. Measured side by
    side (``bench dyck_fig1 --fixed-only``, one prompt, its 108 sequences of 32 samples, two
    other jobs on the 2 cores; identical rows): the 4 x 256 LM 231 s against 590 s one run at a
    time (CPU 166 s against 304 s; ~22 rows per forward instead of ~3); the 2 x 64 LM, whose
    time is mostly the samplers' own Python, 116 s against 169 s at equal CPU.
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
        # keys / values of every computed token, one pool row each (layers, 2, heads, hd), in
        # chunks of _chunk_rows rows (row i: chunk i // _chunk_rows); a prefix's cache is the
        # pool rows of its path (gathered per forward)
        self._chunks: list[np.ndarray] = []
        self._chunk_rows = 1
        self._used = 0
        self._path: dict[tuple[int, ...], np.ndarray] = {}
        self._logp: dict[tuple[int, ...], np.ndarray] = {}
        self._val: dict[tuple[int, ...], float] = {}
        self._asked: set[tuple[int, ...]] = set()
        self.expansions = 0
        self.rows = 0
        self._memo: MemoTreeLM = self  # the memo's owner (a view's is the LM it was made from)

    def view(self) -> MemoTreeLM:
        """A run's own view of this memo (bound to its prompt: ``begin`` first): its own asked
        prefixes (``run_cost``), every computed prefix shared."""
        if self._prompt is None:
            raise ValueError("begin(prompt) before making views: a view is bound to its prompt")
        v = copy.copy(self)
        v._asked = set()
        return v

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
        if self._memo is not self:
            raise ValueError("a view of a memo runs only on the memo's prompt; make a new view")
        self._prompt = prompt
        self._path, self._logp, self._val = {}, {}, {}
        cache = make_prompt_cache(self.model)
        h = self.inner(mx.array([list(prompt)]), cache=cache)
        logp, v = self._readout(h)
        k = np.stack([np.array(c.keys[0, :, : len(prompt), :]) for c in cache])
        vv = np.stack([np.array(c.values[0, :, : len(prompt), :]) for c in cache])
        rows = np.stack([k, vv], axis=1).transpose(3, 0, 1, 2, 4)  # (T, layers, 2, heads, hd)
        row_bytes = int(np.prod(rows.shape[1:])) * 4
        self._chunk_rows = max(CHUNK_BYTES // row_bytes, 1)
        self._chunks, self._used = [], 0
        idx = self._append(rows)
        for i in range(len(prompt)):
            key = prompt[: i + 1]
            self._path[key] = idx[: i + 1]
            self._logp[key] = logp[0, i]
            self._val[key] = float(v[0, i])

    def _append(self, rows: np.ndarray) -> np.ndarray:
        """Store computed tokens' keys / values in the pool; their row indices."""
        start, i, n = self._used, 0, len(rows)
        while i < n:
            c, o = divmod(self._used, self._chunk_rows)
            if c == len(self._chunks):  # untouched pages cost nothing until written
                self._chunks.append(np.empty((self._chunk_rows,) + rows.shape[1:], np.float32))
            k = min(n - i, self._chunk_rows - o)
            self._chunks[c][o : o + k] = rows[i : i + k]
            i += k
            self._used += k
        return np.arange(start, self._used, dtype=np.int32)

    def _gather(self, paths: np.ndarray) -> np.ndarray:
        """The pool rows of ``paths`` (any shape of row indices), in one array."""
        if len(self._chunks) == 1:
            return self._chunks[0][paths]
        c, o = np.divmod(paths, self._chunk_rows)
        out = np.empty(paths.shape + self._chunks[0].shape[1:], np.float32)
        for k in np.unique(c):
            m = c == k
            out[m] = self._chunks[k][o[m]]
        return out

    @property
    def run_cost(self) -> int:
        return len(self._asked)

    def _ensure(self, fulls: Sequence[tuple[int, ...]]) -> None:
        if self._memo is not self and (
            self._logp is not self._memo._logp or self._val is not self._memo._val
        ):  # begin(another prompt) or set_head on the memo after this view was made
            raise ValueError("this view's memo has moved (another prompt or head); make a new view")
        missing = {f for f in fulls if f not in self._logp}
        if not missing:
            return
        eng = engine.current()
        if eng is not None:  # with the misses of the engine's other runs
            eng.call(self._memo._ensure_all, missing, len(missing))
            return
        self._memo._ensure_now(missing)

    def _ensure_all(self, missing: list[set]) -> list[None]:
        self._ensure_now(set().union(*missing))
        return [None] * len(missing)

    def _ensure_now(self, fulls) -> None:
        """Compute every prefix of ``fulls`` not yet known, and their unknown ancestors: one
        batched forward per wave (the prefixes whose parents are known), lengths mixed."""
        todo: set[tuple[int, ...]] = set()
        stack = [f for f in fulls if f not in self._logp]
        while stack:
            f = stack.pop()
            if f not in todo and f not in self._logp:
                todo.add(f)
                stack.append(f[:-1])
        while todo:
            wave = sorted(f for f in todo if f[:-1] not in todo)
            self._compute(wave)
            todo.difference_update(wave)

    def _compute(self, fulls: list[tuple[int, ...]]) -> None:
        """pi_ref, V^ and the last token's keys / values of each of ``fulls`` (their parents
        computed), in one batched forward: each row's cache is its parent's path of pool rows,
        left-padded to the longest (the padding masked; keys keep their own positions)."""
        lens = [len(f) - 1 for f in fulls]
        T = max(lens)
        paths = np.zeros((len(fulls), T), dtype=np.int32)  # (n, T) pool rows, left-padded
        for r, f in enumerate(fulls):
            paths[r, T - lens[r] :] = self._path[f[:-1]]
        kv = self._gather(paths).transpose(2, 3, 0, 4, 1, 5)  # (layers, 2, n, heads, T, hd)
        pads = None if min(lens) == T else mx.array([T - n for n in lens])
        offset = T if pads is None else mx.array(lens)
        caches = [
            _PathCache(
                mx.array(np.ascontiguousarray(k)), mx.array(np.ascontiguousarray(v)), offset, pads
            )
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
        idx = self._append(out[:, V + 1 :].reshape((len(fulls),) + tuple(new.shape[1:])))
        for r, f in enumerate(fulls):
            self._path[f] = np.append(self._path[f[:-1]], idx[r])
            self._logp[f], self._val[f] = logp_np[r], float(v_np[r])
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
    """The KV caches of a batch of prefixes (given whole, left-padded to one length: ``pads``
    per row, masked; ``offset`` each row's own length, for RoPE); keeps the new token's keys /
    values apart."""

    def __init__(self, keys: mx.array, values: mx.array, offset, pads: mx.array | None = None):
        super().__init__()
        self.keys, self.values, self.offset, self.pads = keys, values, offset, pads

    def update_and_fetch(self, keys, values):
        self.new_k, self.new_v = keys, values
        self.offset = self.offset + keys.shape[2]
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate(
            [self.values, values], axis=2
        )

    def make_mask(self, N: int, **kwargs):
        if self.pads is None:
            return super().make_mask(N, **kwargs)
        return create_causal_mask(N, offset=self.keys.shape[2], left_padding=self.pads)
