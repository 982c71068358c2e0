"""One sampling run's state: the prefix store, pi_ref and V^ with memoization, block sampling,
budgets and accounting. Samplers decide where to go; a ``Run`` makes the model and verifier
calls (batched, never twice for one prefix). ``Sampler.start`` makes one per run, so two runs of
one sampler object never share state."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator, Sequence

import mlx.core as mx
import numpy as np

from .actions import ActionSpace
from .dist import draw, process_batch
from .errors import ConfigError, EmptyPromptError, LanguageModelError, VerifierError
from .protocols import LanguageModel, Verifier
from .results import Event, SampleStats
from .rng import KeyedRNG
from .tree import NextTokenDist, Node, PrefixTree

DEFAULT_MAX_STEPS = 1_000_000


class UnfinishedRun(Exception):
    """Internal: the run ends unfinished (``reason``); the sampler returns its best effort."""

    reason = "budget"


class BudgetExhausted(UnfinishedRun):
    """Internal: a budget ran out."""


class RootDeadEnd(UnfinishedRun):
    """Internal: ``max_root_retries`` draws in a row at the root all weighed zero."""

    reason = "dead-end"


def process_logprobs(logp, temp: float, top_k: int, top_p: float) -> NextTokenDist:
    """One row of log-probs -> its distribution after temperature, top-k, then top-p
    (renormalized; see ``mlx_vgb.dist``). Any of these changes pi_ref: the walk then targets
    pi_ref' * tau with pi_ref' the transformed distribution."""
    x = logp if isinstance(logp, mx.array) else np.asarray(logp, dtype=np.float32)
    batch, _ = process_batch(x.reshape(1, -1), temp, top_k, top_p)
    return batch.rows()[0]


def validate_values(vals, n: int, what: str, prefixes: Sequence) -> np.ndarray:
    v = np.asarray(vals, dtype=np.float64).reshape(-1)
    if v.shape != (n,):
        raise VerifierError(
            f"verifier {what}() returned {v.size} numbers for {n} prefixes; "
            "return one value per prefix"
        )
    bad = ~np.isfinite(v) | (v < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise VerifierError(
            f"verifier {what}() returned {v[i]!r} for prefix {tuple(prefixes[i])[-16:]}: values "
            "must be finite and >= 0 (a probability of success, or exp(reward / beta))"
        )
    return v


class Run:
    """One sampling run of ``lm`` and ``verifier`` on ``prompt``: its tree, stats, current and
    best node. Iterating a run made by ``Sampler.start`` yields the sampler's events."""

    def __init__(
        self,
        lm: LanguageModel,
        verifier: Verifier | None,
        prompt: Sequence[int],
        *,
        horizon: int,
        actions: ActionSpace,
        temp: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        drift: float = 1.0,
        max_steps: int | None = None,
        max_forward_tokens: int | None = None,
        seed: int = 0,
    ):
        if not isinstance(horizon, int) or horizon < 1:
            raise ConfigError(f"horizon (max tokens) must be an integer >= 1, got {horizon!r}")
        if not (0 < drift <= 1):
            raise ConfigError(
                f"drift lambda must be in (0, 1], got {drift!r}; 1 is the paper's walk"
            )
        if temp < 0 or not (0 < top_p <= 1) or top_k < 0:
            raise ConfigError(
                f"need temp >= 0, 0 < top_p <= 1, top_k >= 0; got {temp}, {top_p}, {top_k}"
            )
        for name, b in (("max_steps", max_steps), ("max_forward_tokens", max_forward_tokens)):
            if b is not None and b < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {b}")
        prompt = tuple(int(t) for t in prompt)
        if not prompt and getattr(lm, "requires_prompt", True):
            raise EmptyPromptError("the prompt is empty: give at least one token of prompt text")
        self.lm, self.verifier, self.prompt = lm, verifier, prompt
        self.horizon, self.actions = horizon, actions
        self.temp, self.top_k, self.top_p = temp, top_k, top_p
        self.drift, self.log_drift = drift, math.log(drift)
        self.max_depth = actions.max_depth(horizon)
        # a run always ends: without a step budget, stop after DEFAULT_MAX_STEPS
        self.max_steps = max_steps if max_steps is not None else DEFAULT_MAX_STEPS
        self.max_forward_tokens = max_forward_tokens
        self.rng = KeyedRNG(seed)
        self.seed = seed
        self.stats = SampleStats()
        self.tree = PrefixTree(horizon, frozenset(getattr(lm, "eos_token_ids", frozenset())))
        self.current: Node = self.tree.root  # where the sampler is now
        self.best: Node = self.tree.root  # deepest walk node visited: the unfinished best effort
        self.events: Iterator[Event] | None = None  # the sampler's event stream (Sampler.start)
        self.trace = None  # optional fn(mlx_vgb.trace.StepTrace) per walk step (Sampler.start)
        self.options: list | None = None  # what the current step weighed (only when tracing)
        # forward-token budgets at which to read off a budget-limited run's result
        # (``Sampler.sample_budgets``): ascending; ``on_budget_mark(b)`` is called where a run
        # with ``max_forward_tokens=b`` would have stopped
        self.budget_marks: list[int] = []
        self.on_budget_mark: Callable[[int], None] | None = None
        self.t0 = time.perf_counter()
        lm.begin(prompt)
        if verifier is not None:
            verifier.begin(prompt)

    def __iter__(self) -> Iterator[Event]:
        if self.events is None:
            raise ConfigError("this Run has no sampler attached: make runs with Sampler.start()")
        return self.events

    def close(self) -> None:
        """Stop the run's event stream (a no-op once it has ended)."""
        if self.events is not None:
            self.events.close()

    def release(self) -> None:
        """Free what the run holds on the device once its result is out: every node's pi_ref
        row (~1.2 MB each at V = 151,936) and the model's and verifier's KV caches. The tree
        keeps its tokens and values. ``Sampler.sample`` / ``stream`` call this; without it
        the memory waits for Python's cyclic garbage collector (the run, its event stream and
        the trie's back links reference each other), which a batched bench outran (~20 GB)."""
        self.close()
        stack = [self.tree.root]
        while stack:
            n = stack.pop()
            n.dist = None
            stack.extend(n.next.values())
        for obj in (self.lm, self.verifier):
            end = getattr(obj, "end", None)
            if end is not None:
                end()

    # -- tracing (a no-op unless ``trace`` is set) ---------------------------------------
    def note_options(self, options: Sequence[Node], logw) -> None:
        """A child-choice rule weighed ``options`` with log weights ``logw``."""
        if self.options is not None:
            from .trace import MAX_TRACED_OPTIONS

            room = MAX_TRACED_OPTIONS - len(self.options)
            self.options.extend(list(zip(options, logw))[: max(room, 0)])

    def trace_step(self, before: Node, after: Node, restarted: bool, rule: str) -> None:
        from .trace import StepOption, StepTrace

        opts = tuple(
            StepOption(o.tokens, o.log_value, float(w), o is before.parent)
            for o, w in (self.options or ())
        )
        if after is before:
            move, target = "stay", None
        else:
            move = "restart" if restarted else "child" if len(after) > len(before) else "parent"
            target = after.tokens
        self.options = None
        self.trace(
            StepTrace(
                self.stats.steps,
                before.tokens,
                before.depth,
                before.log_value,
                opts,
                target,
                move,
                rule,
            )
        )

    def visit(self, node: Node) -> None:
        """The sampler is now at ``node``: track it as current and as best effort."""
        self.current = node
        b = self.best
        if node.depth > b.depth or (
            node.depth == b.depth
            and node.log_value is not None
            and (b.log_value is None or node.log_value > b.log_value)
        ):
            self.best = node

    # -- budgets ---------------------------------------------------------------------------
    def count_step(self) -> None:
        if self.max_steps is not None and self.stats.steps >= self.max_steps:
            raise BudgetExhausted
        self.stats.steps += 1

    # -- pi_ref ----------------------------------------------------------------------------
    def ensure_dists(self, nodes: Sequence[Node]) -> None:
        todo, seen = [], set()
        for n in nodes:
            if n.dist is None and id(n) not in seen:
                if n.is_leaf:
                    raise AssertionError("pi_ref asked at a leaf")
                seen.add(id(n))
                todo.append(n)
        if not todo:
            return
        while self.budget_marks and self.stats.forward_tokens >= self.budget_marks[0]:
            self.on_budget_mark(self.budget_marks.pop(0))  # the check below, at that budget
        if (
            self.max_forward_tokens is not None
            and self.stats.forward_tokens >= self.max_forward_tokens
        ):
            raise BudgetExhausted
        prefixes = [n.tokens for n in todo]
        device = getattr(self.lm, "logprobs_mx", None)
        out = device(prefixes) if device is not None else self.lm.logprobs(prefixes)
        if not isinstance(out, mx.array):
            out = np.asarray(out)
        v = self.lm.vocab_size
        if out.ndim != 2 or out.shape[0] != len(todo) or out.shape[1] < v:
            raise LanguageModelError(
                f"logprobs() returned shape {tuple(out.shape)}; expected ({len(todo)}, {v})"
            )
        self.stats.model_calls += 1
        self.stats.forward_tokens += len(todo)
        batch, bad = process_batch(
            out[:, :v] if out.shape[1] > v else out,
            self.temp,
            self.top_k,
            self.top_p,
            normalized=bool(getattr(self.lm, "normalized_logprobs", False)),
        )
        if bad.any():
            n = todo[int(np.argmax(bad))]
            raise LanguageModelError(
                f"logprobs() row for prefix {n.tokens[-16:]} has NaN or no finite entry"
            )
        for n, d in zip(todo, batch.rows()):
            n.dist = d

    def sample_blocks(self, starts: Sequence[Node]) -> list[Node]:
        """One action drawn from pi_ref at each start node (batched across rows)."""
        rows = list(starts)
        lens = [0] * len(rows)
        active = [i for i, n in enumerate(rows) if not n.is_leaf]
        if len(active) < len(rows):
            raise AssertionError("cannot draw an action at a leaf")
        self.stats.proposals += len(rows)
        while active:
            self.ensure_dists([rows[i] for i in active])
            groups: dict[int, list[int]] = {}
            for i in active:
                groups.setdefault(id(rows[i]), []).append(i)
            # one device sync for every row's draw; uniforms consumed group by group
            reqs = [(rows[idx[0]].dist, self.rng.uniform(len(idx))) for idx in groups.values()]
            for idx, (toks, _) in zip(groups.values(), self.draw(reqs)):
                node = rows[idx[0]]
                for i, t in zip(idx, toks):
                    rows[i] = self.tree.child(node, int(t))
                    lens[i] += 1
            still = []
            for i in active:
                n = rows[i]
                if n.is_leaf or self.actions.ends_block(lens[i], n.tokens[-1]):
                    self._mark_walk_node(n, starts[i])
                else:
                    still.append(i)
            active = still
        return rows

    def draw(self, requests):
        """(token ids, log-probs) for each (dist, uniforms) request (``mlx_vgb.dist.draw``)."""
        return draw(requests)

    def all_children(self, node: Node) -> tuple[list[Node], np.ndarray]:
        """Every single-token child with positive pi_ref, and its log pi_ref."""
        if not self.actions.single_token:
            raise ConfigError(
                "exact enumeration of children needs single-token actions; "
                "use Rejection(k) or SelfNormalized(k) with blocks"
            )
        self.ensure_dists([node])
        ids, logp = node.dist.support()
        children = []
        for t in ids:
            c = self.tree.child(node, int(t))
            self._mark_walk_node(c, node)
            children.append(c)
        self.stats.proposals += len(children)
        return children, logp

    def _mark_walk_node(self, n: Node, start: Node) -> None:
        if n.depth < 0:
            n.parent, n.depth = start, start.depth + 1
            if n.depth > self.stats.max_depth:
                self.stats.max_depth = n.depth

    # -- V^ and tau ------------------------------------------------------------------------
    def ensure_values(self, nodes: Sequence[Node]) -> None:
        """log V^ for internal walk nodes, log tau for leaves (one batched call each)."""
        inner, leaves, seen = [], [], set()
        for n in nodes:
            if n.log_value is None and id(n) not in seen:
                seen.add(id(n))
                (leaves if n.is_leaf else inner).append(n)
        for group, fn in ((inner, "value"), (leaves, "tilt")):
            if not group:
                continue
            prefixes = [n.tokens for n in group]
            vals = validate_values(getattr(self.verifier, fn)(prefixes), len(group), fn, prefixes)
            self.stats.verifier_calls += 1
            self.stats.verifier_evals += len(group)
            with np.errstate(divide="ignore"):
                logs = np.log(vals)
            for n, lv in zip(group, logs):
                n.log_value = float(lv)

    def tilt_of(self, node: Node) -> float:
        self.ensure_values([node])
        return math.exp(node.log_value)

    def pad_steps(self, leaf: Node) -> int:
        """Forced pad actions after ``leaf`` up to depth D (0 at depth D)."""
        return max(0, self.max_depth - leaf.depth)

    def finish_stats(self) -> SampleStats:
        self.stats.nodes = self.tree.size
        self.stats.wall_s = time.perf_counter() - self.t0
        return self.stats
