"""pi_ref on an mlx-lm model, with a KV cache that follows the walk.

The adapter keeps one *trunk* cache for the walk's current prefix (a backtrack trims it, a move
down extends it) and one *branch* cache for the rows of the last batched call (the K candidate
children of a node; the next call extends those rows by one token, gathering rows from the
branch instead of recomputing). A prefix whose keys and values are in either cache is never
computed again; ``recomputed_tokens`` counts the positions that were (zero on trimmable caches).

Caches that cannot be trimmed (rotating windows, SSM / hybrid layers) fall back to snapshots:
the cache state after each prefix the trunk reached is kept (LRU, ``max_snapshots``; an SSM's
state is small and of fixed size), a backtrack restores the longest snapshot on the path and
re-prefills the rest (counted in ``recomputed_tokens``).

Prompts are prefilled once per model (``PromptCache``, shared by every adapter of a model):
N responses to one prompt, a bench's configs on one problem and a chat's repeated turns copy
the prompt's keys and values instead of running it again.

With a ``value_head`` (``mlx_vgb.verifier_format.ValueHead``) the forward that gives
pi_ref(.|s) also gives V^(s) from the same last hidden state (``model_verifier.ValueHeadVerifier``).
"""

from __future__ import annotations

import collections
import copy
import threading
import weakref
from typing import Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map
from mlx_lm.models.cache import (
    KVCache,
    RotatingKVCache,
    can_trim_prompt_cache,
    make_prompt_cache,
)

from . import engine
from .errors import ConfigError, EmptyPromptError
from .prefixes import common_prefix_len, common_prefix_len_many
from .protocols import BaseLanguageModel


def _slice_cache(cache: list, rows: list[int] | None, length: int, repeat: int = 1) -> list:
    """New KV caches holding ``rows`` (or row 0 repeated) of ``cache`` up to ``length``."""
    out = []
    for c in cache:
        n = copy.copy(c)
        k, v = c.keys[..., :length, :], c.values[..., :length, :]
        if rows is not None:
            idx = mx.array(rows)
            k, v = k[idx], v[idx]
        elif repeat > 1:
            k, v = mx.repeat(k, repeat, axis=0), mx.repeat(v, repeat, axis=0)
        else:
            k, v = mx.array(k), mx.array(v)
        n.keys, n.values, n.offset = k, v, length
        out.append(n)
    return out


class PromptCache:
    """Prefilled prompts' KV caches, shared by the adapters of a model (LRU, at most
    ``max_bytes``; a prompt bigger than that is not kept). Keyed by the model object (a weak
    reference: a freed model's entries never serve another) and the prefilled tokens. Entries
    are copies, and each run gets a copy: a run's cache updates never reach another's."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, model, tokens: tuple[int, ...]) -> tuple[list, int] | None:
        """(a copy of the cache, its length) of the longest kept prompt that ``tokens`` starts
        with (a chat's next turn starts with the last one's prompt), or None."""
        with self._lock:
            self._prune()
            best = None
            for key, e in self._entries.items():
                n = len(key[1])
                if key[0] == id(model) and n <= len(tokens) and tokens[:n] == key[1]:
                    if e[0]() is model and (best is None or n > len(best[1])):
                        best = key
            if best is None:
                self.misses += 1
                return None
            self._entries.move_to_end(best)
            self.hits += 1
            return _slice_cache(self._entries[best][1], None, len(best[1])), len(best[1])

    def put(self, model, tokens: tuple[int, ...], cache: list) -> None:
        kept = _slice_cache(cache, None, len(tokens))
        mx.eval(*[a for c in kept for a in (c.keys, c.values)])
        size = sum(a.nbytes for c in kept for a in (c.keys, c.values))
        if size > self.max_bytes:
            return
        with self._lock:
            self._prune()
            self._entries[(id(model), tokens)] = (weakref.ref(model), kept, size)
            self._entries.move_to_end((id(model), tokens))
            total = sum(e[2] for e in self._entries.values())
            while total > self.max_bytes:
                total -= self._entries.popitem(last=False)[1][2]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e[2] for e in self._entries.values())

    def _prune(self) -> None:
        """Drop the entries of freed models (their memory goes with them; caller holds the lock)."""
        for key in [k for k, e in self._entries.items() if e[0]() is None]:
            del self._entries[key]


PROMPTS = PromptCache()  # the default, shared by every MLXLanguageModel


class MLXLanguageModel(BaseLanguageModel):
    """``LanguageModel`` over any mlx-lm model (``mlx_lm.load(...)`` gives model, tokenizer)."""

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        eos_token_ids: Sequence[int] | None = None,
        value_head=None,
        hidden_layer: int = -1,
        max_kv_size: int | None = None,
        max_branches: int = 32,
        max_branch_bytes: int = 128 << 20,
        max_snapshots: int = 256,
        prompt_cache: PromptCache | None = PROMPTS,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.prompt_cache = prompt_cache  # None: every run prefills its prompt
        args = getattr(model, "args", None)
        vocab = getattr(args, "vocab_size", None)
        if vocab is None:
            raise ConfigError("cannot read vocab_size from the model's args")
        self.vocab_size = int(vocab)
        if eos_token_ids is None:
            eos_token_ids = getattr(tokenizer, "eos_token_ids", None) or []
            if not eos_token_ids and getattr(tokenizer, "eos_token_id", None) is not None:
                eos_token_ids = [tokenizer.eos_token_id]
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.context_length = getattr(args, "max_position_embeddings", None)
        if value_head is not None and hidden_layer != -1:
            raise ConfigError("value heads read the final hidden state (hidden_layer=-1) only")
        self.value_head = value_head
        self._hidden_path = hasattr(model, "model") and (
            hasattr(model, "lm_head")
            or hasattr(getattr(model.model, "embed_tokens", None), "as_linear")
        )
        if value_head is not None and not self._hidden_path:
            raise ConfigError(
                f"{type(model).__module__} exposes no hidden states "
                "(model.model + lm_head): a value head cannot read them"
            )
        self.max_kv_size = max_kv_size
        self.max_branches = max_branches  # batched caches kept for reuse (memory: K rows each)
        self.max_branch_bytes = max_branch_bytes  # ... and the most bytes they hold (oldest go)
        self.max_snapshots = max_snapshots  # non-trimmable caches: states kept per prefix
        probe = self._new_cache()
        # plain KV caches: trimmed, and rows of a batch are cut from / repeated out of them;
        # other caches (rotating, SSM, hybrid) go one row at a time and keep snapshots
        self.batchable = all(type(c) is KVCache for c in probe)
        self.trimmable = self.batchable
        self.prompt: tuple[int, ...] = ()
        self.reset_counters()

    # -- counters ------------------------------------------------------------------------
    def reset_counters(self) -> None:
        self.positions_computed = 0  # positions run through the model, prompt excluded
        self.prefill_tokens = 0  # prompt positions
        self.recomputed_tokens = 0  # positions run again after having been computed once
        self.reprefill_tokens = 0  # ... of which on the walk's own path (after a backtrack)
        self.forward_calls = 0
        self._seen: set[int] = set()  # hashes of every prefix computed in this run

    def _new_cache(self) -> list:
        if self.max_kv_size is not None:
            return [
                RotatingKVCache(max_size=self.max_kv_size, keep=0)
                for _ in range(len(self.model.layers))
            ]
        return make_prompt_cache(self.model)

    # -- run state -------------------------------------------------------------------------
    def begin(self, prompt: Sequence[int]) -> None:
        prompt = tuple(int(t) for t in prompt)
        if not prompt:
            raise EmptyPromptError("the prompt is empty: give at least one token of prompt text")
        if self.context_length and len(prompt) >= self.context_length:
            raise ConfigError(
                f"the prompt has {len(prompt)} tokens but the model's context is "
                f"{self.context_length}: shorten the prompt"
            )
        self.prompt = prompt
        self.reset_counters()
        self._trunk = self._new_cache()
        self._trunk_tokens: tuple[int, ...] = ()
        self._trunk_logp = None
        self._trunk_value = None
        # recent batched caches: (cache, row token tuples, their logp, their values)
        self._branches: collections.deque = collections.deque(maxlen=self.max_branches)
        self._pending: dict[tuple[int, ...], tuple[mx.array, float | None]] = {}
        # states restored when a trim is impossible (rotating / SSM caches)
        self._snapshots: collections.OrderedDict = collections.OrderedDict()
        # prefill all but the last prompt token; the first request computes the rest
        head = prompt[:-1]
        shared = self.prompt_cache if self.batchable and head else None
        kept = shared.get(self.model, head) if shared is not None else None
        if kept is not None:
            self._trunk, n = kept
            self._trunk_tokens = head[:n]
        if self._trunk_tokens != head:
            self._extend_trunk(head[len(self._trunk_tokens) :])
            if shared is not None:
                shared.put(self.model, head, self._trunk)
        self.prefill_tokens, self.positions_computed = len(prompt) - 1, 0

    def _keep_branch(self, branch: tuple) -> None:
        """Keep a cache for reuse; the oldest go past ``max_branches`` or ``max_branch_bytes``
        (KV rows and log-prob rows: ~12 MB per 500-token row of a 0.5B model, 0.6 MB per
        log-prob row at V = 151,936). Dropping one costs recomputation only, never a result."""
        size = sum(a.nbytes for c in branch[0] for a in (c.keys, c.values) if a is not None) + sum(
            x.nbytes for x in branch[2] if x is not None
        )
        self._branches.append((*branch, size))
        total = sum(b[4] for b in self._branches)
        while len(self._branches) > 1 and total > self.max_branch_bytes:
            total -= self._branches.popleft()[4]

    def end(self) -> None:
        """Drop the run's KV caches and kept rows (``Run.release``); still usable: a later call
        recomputes from the prompt."""
        if not hasattr(self, "_trunk"):
            return
        self._trunk = self._new_cache()
        self._trunk_tokens = ()
        self._trunk_logp = self._trunk_value = None
        self._branches.clear()
        self._pending = {}
        self._snapshots.clear()

    # -- forward -------------------------------------------------------------------------
    def _forward(self, tokens: mx.array, cache: list):
        """(B, S) tokens -> (log-probs at the last position (B, V) on the device, values (B,)
        on the host or None). Inside an ``mlx_vgb.engine.Engine`` job the engine serves it,
        batched with the other jobs' forwards."""
        eng = engine.current()
        if eng is not None:
            return eng.forward(self, tokens, cache)
        return self._forward_local(tokens, cache)

    def _forward_local(self, tokens: mx.array, cache: list):
        self.forward_calls += 1
        return self._heads(self._backbone(tokens, cache)[:, -1:, :])

    def _backbone(self, tokens: mx.array, cache: list) -> mx.array:
        """Hidden states (B, S, D); the logits when hidden states are not exposed."""
        if self._hidden_path:
            return self.model.model(tokens, cache=cache)
        return self.model(tokens, cache=cache)

    def _heads(self, h: mx.array):
        """(log-probs (B, V) on the device, values (B,) on the host or None) from one position
        of ``_backbone`` (B, 1, D)."""
        val = None
        if self._hidden_path:
            head = getattr(self.model, "lm_head", None)
            logits = head(h) if head is not None else self.model.model.embed_tokens.as_linear(h)
            if self.value_head is not None:
                val = self.value_head(h[:, 0, :])
        else:
            logits = h
        logits = logits[:, 0, :].astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        # the log-probs stay on the device (the sampler truncates and draws there); only the
        # values, one scalar per row, cross to the host
        if val is not None:
            mx.eval(logp, val)
            return logp, np.array(val.astype(mx.float32)).reshape(-1)
        mx.eval(logp)
        return logp, None

    def _count(
        self, full_rows: Sequence[tuple[int, ...]], start: int, where: str = "trunk"
    ) -> None:
        for r in full_rows:
            for k in range(start + 1, len(r) + 1):
                key = hash(r[:k])
                if key in self._seen:
                    self.recomputed_tokens += 1
                    if where == "trunk":
                        self.reprefill_tokens += 1
                else:
                    self._seen.add(key)
            self.positions_computed += len(r) - start

    def _extend_trunk(self, tokens: Sequence[int]):
        if not tokens:
            return
        if not self.batchable and self.prompt and len(self._trunk_tokens) >= len(self.prompt) - 1:
            if len(tokens) > 1:  # one token at a time: a snapshot at every prefix
                for t in tokens:
                    self._extend_trunk((t,))
                return
        full = self._trunk_tokens + tuple(tokens)
        self._count([full], len(self._trunk_tokens))
        logp, val = self._forward(mx.array([list(tokens)]), self._trunk)
        self._trunk_tokens = full
        self._trunk_logp, self._trunk_value = logp[0], (None if val is None else float(val[0]))
        mx.eval(self._trunk_logp)  # rows kept across calls are evaluated (streams are per thread)
        if not self.batchable:
            self._save_snapshot()

    def _move_trunk(self, target: tuple[int, ...], need_logits: bool = True) -> None:
        """Make the trunk hold exactly ``target`` (prompt included), with the log-probs at its
        end when ``need_logits``."""
        if target == self._trunk_tokens and (self._trunk_logp is not None or not need_logits):
            return
        c = common_prefix_len(self._trunk_tokens, target)
        # a branch row may share more of the target than the trunk: promote it
        best, best_b, best_j = c, None, -1
        for b in self._branches:
            for j, r in enumerate(b[1]):
                m = common_prefix_len(r, target)
                if m > best:
                    best, best_b, best_j = m, b, j
        if best_b is not None:
            if self.batchable and c < len(self._trunk_tokens):
                # the trunk's own path past the fork is not held anywhere else: keep it
                self._keep_branch(
                    (self._trunk, [self._trunk_tokens], [self._trunk_logp], [self._trunk_value])
                )
            n = min(best, len(target))
            self._trunk = _slice_cache(best_b[0], [best_j], n)
            self._trunk_tokens = target[:n]
            self._trunk_logp = self._trunk_value = None
            if n == len(best_b[1][best_j]) and best_b[2][best_j] is not None:
                self._trunk_logp, self._trunk_value = best_b[2][best_j], best_b[3][best_j]
            c = n
        if target == self._trunk_tokens and (self._trunk_logp is not None or not need_logits):
            return
        if need_logits and c == len(target):
            c -= 1  # the logits at target's end come only from running its last token
        if c < len(self._trunk_tokens):
            if self.batchable:
                # keep the abandoned path as a branch: coming back down costs nothing
                self._keep_branch(
                    (self._trunk, [self._trunk_tokens], [self._trunk_logp], [self._trunk_value])
                )
                self._trunk = _slice_cache(self._trunk, None, c)
                self._trunk_tokens = self._trunk_tokens[:c]
                self._trunk_logp = self._trunk_value = None
            elif can_trim_prompt_cache(self._trunk):
                for layer in self._trunk:
                    layer.trim(len(self._trunk_tokens) - c)
                self._trunk_tokens = self._trunk_tokens[:c]
                self._trunk_logp = self._trunk_value = None
            else:
                # restore the longest snapshot on the target's path (the prompt's at least)
                key, state = max(
                    (
                        (k, st)
                        for k, st in self._snapshots.items()
                        if len(k) <= c and target[: len(k)] == k
                    ),
                    key=lambda kv: len(kv[0]),
                    default=((), None),
                )
                self._trunk = self._new_cache()
                if state is not None:
                    for layer, st in zip(self._trunk, self._copy(state)):
                        layer.state = st
                self._trunk_tokens = key
                self._trunk_logp = self._trunk_value = None
                c = len(key)
        self._extend_trunk(target[c:])

    @staticmethod
    def _copy(states: list) -> list:
        fresh = lambda x: x + 0 if isinstance(x, mx.array) else x  # noqa: E731 - new buffer
        return [tree_map(fresh, st) for st in states]

    def _save_snapshot(self) -> None:
        """Non-trimmable caches: remember the state at this prefix (LRU)."""
        self._snapshots[self._trunk_tokens] = self._copy([c.state for c in self._trunk])
        self._snapshots.move_to_end(self._trunk_tokens)
        while len(self._snapshots) > self.max_snapshots:
            self._snapshots.popitem(last=False)

    def _full(self, prefix: Sequence[int]) -> tuple[int, ...]:
        full = self.prompt + tuple(int(t) for t in prefix)
        if self.context_length and len(full) > self.context_length:
            raise ConfigError(
                f"prompt + response reach {len(full)} tokens, beyond the model's "
                f"context of {self.context_length}: lower max tokens (horizon)"
            )
        return full

    def _compute(self, prefixes: Sequence[Sequence[int]]):
        """Log-probs (and values) at the end of each prefix, using the caches."""
        rows = [self._full(p) for p in prefixes]
        out: list = [None] * len(rows)
        todo = []
        for i, r in enumerate(rows):
            if r in self._pending:
                out[i] = self._pending[r]
            elif r == self._trunk_tokens and self._trunk_logp is not None:
                out[i] = (self._trunk_logp, self._trunk_value)
            else:
                todo.append(i)
        if len(todo) == 1 or (todo and not self.batchable):
            for i in todo:
                self._move_trunk(rows[i])
                out[i] = (self._trunk_logp, self._trunk_value)
        elif todo:
            self._compute_batch([rows[i] for i in todo], todo, out)
        return out

    def _compute_batch(self, rows, idx, out) -> None:
        # serve from recent branches when every row extends a branch row by the same length
        src = None
        if self._branches and len({len(r) for r in rows}) == 1:
            where = {}
            trunk = (self._trunk, [self._trunk_tokens], [self._trunk_logp], [self._trunk_value])
            for b in (trunk, *self._branches):
                for j, r in enumerate(b[1]):
                    where.setdefault(r, (b, j))
            src, ext = [], None
            for r in rows:
                for cut in range(len(r) - 1, len(self.prompt) - 1, -1):
                    hit = where.get(r[:cut])
                    if hit is not None:
                        break
                else:
                    src = None
                    break
                if ext not in (None, len(r) - cut):
                    src = None
                    break
                ext = len(r) - cut
                src.append(hit)
        L = min(min(len(r) for r in rows) - 1, common_prefix_len_many(rows))
        if src is not None and len(rows[0]) - ext <= L:
            src = None  # the shared prefix through the trunk covers at least as much
        if src is not None:
            base = len(rows[0]) - ext
            parts, order = {}, []
            for b, j in src:  # gather rows per source branch, then stack the branches
                parts.setdefault(id(b), (b, []))[1].append(j)
            pieces = [_slice_cache(b[0], js, base) for b, js in parts.values()]
            cache = pieces[0] if len(pieces) == 1 else _concat_caches(pieces)
            order = [(id(b), j) for b, j in src]
            flat = [(bid, j) for bid, (_, js) in parts.items() for j in js]
            perm = [flat.index(o) for o in order]
            if perm != list(range(len(perm))):
                cache = _slice_cache(cache, perm, base)
        else:
            lens = {len(r) for r in rows}
            if len(lens) > 1:  # ragged rows: one group per length
                for n in sorted(lens):
                    g = [k for k, r in enumerate(rows) if len(r) == n]
                    self._compute_batch([rows[k] for k in g], [idx[k] for k in g], out)
                return
            self._move_trunk(rows[0][:L], need_logits=False)
            base = L
            cache = _slice_cache(self._trunk, None, L, repeat=len(rows))
        self._count(rows, base, "rows")
        toks = mx.array([list(r[base:]) for r in rows])
        logp, val = self._forward(toks, cache)
        vals = [None] * len(rows) if val is None else [float(v) for v in val]
        rows_lp = [logp[k] for k in range(len(rows))]
        mx.eval(rows_lp)
        self._keep_branch((cache, list(rows), rows_lp, vals))
        for k, i in enumerate(idx):
            out[i] = (rows_lp[k], vals[k])

    # -- LanguageModel protocol -------------------------------------------------------------
    normalized_logprobs = True  # rows are log-softmax outputs

    def logprobs_mx(self, prefixes: Sequence[Sequence[int]]) -> mx.array:
        """Log pi_ref at the end of each prefix, (B, V) on the device (``Run`` uses this)."""
        rows = [r[0] for r in self._compute(prefixes)]
        return rows[0][None] if len(rows) == 1 else mx.stack(rows)

    def logprobs(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array(self.logprobs_mx(prefixes))

    def values(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """V^ from the value head at the end of each prefix (same forward as pi_ref)."""
        if self.value_head is None:
            raise ConfigError("this language model has no value head")
        res = self._compute(prefixes)
        # keep the log-probs of these prefixes: the walk asks for them next
        self._pending = {self._full(p): r for p, r in zip(prefixes, res)}
        return np.array([r[1] for r in res], dtype=np.float64)

    def decode(self, tokens: Sequence[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, tokens))
        return self.tokenizer.decode(list(tokens))


def _concat_caches(pieces: list[list]) -> list:
    out = []
    for layers in zip(*pieces):
        n = copy.copy(layers[0])
        n.keys = mx.concatenate([c.keys for c in layers], axis=0)
        n.values = mx.concatenate([c.values for c in layers], axis=0)
        out.append(n)
    return out
