"""VGB: a random walk on the tree of prefixes (paper, Algorithm 1), and ActionLevelRS, the same
walk without the move to the parent.

From node s (depth h) the walk moves to the parent with weight lambda * V^(s) and to a child s.a
with weight pi_ref(a|s) * V^(s.a) (``mlx_vgb.children`` says how children are drawn); at a leaf
V^ = tau. The walk is reversible with edge conductance pi_ref(y) V^(y) lambda^-depth(y).

Fixed horizon (padding). The theory's responses all have D actions (D = the deepest possible
leaf, ``ActionSpace.max_depth``). A response that ends earlier (EOS, or a line block that reaches
the horizon in fewer than D actions) continues with forced pad actions up to depth D: pi_ref = 1,
no model call, V^ = tau (computed once). Every leaf then sits at depth D with conductance
pi_ref(y) tau(y) lambda^-D, so the stationary law on leaves is pi_ref * tau = pi* whatever the
errors of V^ inside the tree and whatever lambda.
- The lazy walk (theory) walks the pad chain step by step (``Walk.pad`` counts pad actions).
- The practical walk (stop at the first leaf) does not need to: from a leaf y of depth d < D
  the pad chain is a birth-death chain whose j-th edge (j = 1..m+1 from y's parent s, m = D - d
  pad actions) has conductance c_j = pi_ref(y) tau(y) lambda^-(d - 1 + j). Started at y, it
  reaches the padded leaf before it returns to s with probability
      q = (1 / c_1) / sum_j (1 / c_j) = 1 / sum_{j=0..m} lambda^j     (1 / (m + 1) at lambda = 1)
  (the voltage of a series of resistances 1 / c_j), and what the walk does after returning to s
  does not depend on the path inside the chain (strong Markov property). So one coin flip when
  the walk steps onto y replaces the chain: heads, the response y is the output; tails, the
  walk steps back to s. The first-leaf law is the same as on the padded tree (tested on trees
  in ``tests/test_exactness.py`` against ``laws.practical_law`` on the explicit padded tree).
``pad=False`` restores the old rule (a shallow leaf is a leaf): faster, but the practical walk
then prefers short responses even with the exact value, and the lazy walk's leaf law is
pi_ref * tau * lambda^-depth, off pi* when lambda < 1.

Variants: ``VGB()`` is the practical one of the experiments (no laziness, stop at the first leaf);
with the exact V^ its output law is pi*, with an imperfect V^ it is not (only the lazy walk
carries the guarantee). ``VGB(lazy=True)`` is the theory one: stay with probability 1/2, run T
steps, output the node if it is a leaf, else restart from the root, up to ``max_tries`` times
(then the run ends unfinished, ``finish_reason="budget"``). T and the tries default to
``default_steps_per_try`` / ``default_max_tries``, measured on trees.

Dead ends: a node where every weight is zero is left by a forced move to its parent (VGB) or a
restart from the root (ActionLevelRS). At the root, ``DeadEndError`` is raised only when the
rule proves every child has weight zero (``Enumerate``: nothing was generated yet, and no
response can succeed); a sampled rule that draws only zero-weight children ``max_root_retries``
times in a row ends the run unfinished (``finish_reason="dead-end"``) with its best effort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .children import DEFAULT_CANDIDATES, ChildChoice, Rejection
from .errors import ConfigError, DeadEndError
from .results import Append, Backtrack, Event
from .run import RootDeadEnd, Run
from .sampler import Sampler
from .tree import Node

DEFAULT_MAX_ROOT_RETRIES = 32
# Lazy walk defaults, measured on trees (mlx-vgb bench exactness; docs/benchmarks.md): on random
# trees (vocab 2-4, H 3-6, with and without EOS, V^ off V* by factors in [1/3, 3]) the law after
# T = MIXING_FACTOR * commute / lambda steps is within TV 0.005 of pi* for lambda in 0.25..1
# (0.016 at 2 instead of 3), and P(leaf) >= 0.6 * leaf_mass. Tries: a run ends unfinished with
# probability <= UNFINISHED_RATE when P(leaf) >= leaf_mass / 2.
MIXING_FACTOR = 3.0
UNFINISHED_RATE = 1e-3


def _commute_time(depth: int, drift: float) -> float:
    """Expected lazy steps from the root to depth D and back for the depth of the walk with the
    exact value: edge h (h = 1..D) has conductance lambda^-h, so the commute time is
    2 (laziness) * 2 * (sum of the conductances) * (sum of the resistances)."""
    c = sum(drift**-h for h in range(1, depth + 1))
    r = sum(drift**h for h in range(1, depth + 1))
    return 4 * c * r


def default_steps_per_try(depth: int, drift: float = 1.0) -> int:
    """T for the lazy walk: ``MIXING_FACTOR`` * commute time / lambda (12 D^2 at lambda = 1;
    exponential in D for lambda < 1: climbing k levels out of a subtree costs lambda^-k)."""
    return math.ceil(MIXING_FACTOR * _commute_time(depth, drift) / drift)


def leaf_mass(depth: int, drift: float = 1.0) -> float:
    """Stationary mass of the (padded) leaves for the exact value: the leaf edges' conductance
    over twice the total, lambda^-D / (2 sum_h lambda^-h) (1 / (2D) at lambda = 1)."""
    return drift**-depth / (2 * sum(drift**-h for h in range(1, depth + 1)))


def default_max_tries(depth: int, drift: float = 1.0) -> int:
    """Tries such that (1 - p)^tries <= UNFINISHED_RATE for p = leaf_mass / 2."""
    p = leaf_mass(depth, drift) / 2
    return math.ceil(math.log(UNFINISHED_RATE) / math.log1p(-p))


class Walk:
    """The walk's state: one ``step()`` moves (or stays) and returns the event, if any."""

    def __init__(
        self,
        run: Run,
        choice: ChildChoice,
        *,
        backtrack: bool = True,
        lazy: bool = False,
        pad: bool = True,
        max_root_retries: int = DEFAULT_MAX_ROOT_RETRIES,
    ):
        self.run, self.choice = run, choice
        self.backtrack, self.lazy = backtrack, lazy
        self.padded = pad and backtrack
        self.max_root_retries = max_root_retries
        self.node: Node = run.tree.root
        self.pad = 0  # pad actions after a leaf shallower than D (D - depth: the padded leaf)
        self._root_misses = 0

    @property
    def at_leaf(self) -> bool:
        """On a leaf of the (padded) tree: the walk may output ``node``."""
        n = self.node
        return n.is_leaf and (not self.padded or self.pad >= self.run.pad_steps(n))

    def _move(self, target: Node) -> Event:
        s, n = self.run, self.node
        self.node, self.pad = target, 0
        s.visit(target)
        if len(target) > len(n):
            return Append(target.tokens[len(n) :], target.depth, len(target), s.stats.steps)
        s.stats.backtracks += 1
        return Backtrack(len(n) - len(target), target.depth, len(target), s.stats.steps)

    def restart(self) -> Event | None:
        s, n = self.run, self.node
        self.node, self.pad = s.tree.root, 0
        s.current = s.tree.root
        s.stats.restarts += 1
        if len(n):
            return Backtrack(len(n), 0, 0, s.stats.steps)
        return None

    def _pad_step(self, n: Node) -> Event | None:
        """Lazy walk at a leaf of depth < D: one step of the pad chain (no model call)."""
        s = self.run
        if self.pad >= s.pad_steps(n) or s.rng.uniform() < s.drift / (1 + s.drift):
            if self.pad == 0:
                return self._move(n.parent)
            self.pad -= 1
        else:
            self.pad += 1
        return None

    def step(self) -> Event | None:
        s = self.run
        if s.trace is None:
            return self._step()
        before, restarts, s.options = self.node, s.stats.restarts, []
        ev = self._step()
        s.trace_step(before, self.node, s.stats.restarts > restarts, type(self.choice).__name__)
        return ev

    def _step(self) -> Event | None:
        s, n = self.run, self.node
        s.count_step()
        if self.lazy and s.rng.uniform() < 0.5:
            return None
        if n.is_leaf:
            if not self.backtrack:
                return self.restart()
            if self.lazy and self.padded and s.pad_steps(n) > 0:
                return self._pad_step(n)
            return self._move(n.parent)  # a leaf at depth D, or the practical walk's tails
        root = n is s.tree.root
        parent_logw = None
        if self.backtrack and not root:
            s.ensure_values([n])
            parent_logw = s.log_drift + n.log_value
        target = self.choice.choose(s, n, parent_logw)
        if target is not None:
            self._root_misses = 0
            ev = self._move(target)
            if target.is_leaf and self.padded and not self.lazy:
                m = s.pad_steps(target)
                # the pad chain in one coin flip: heads, the padded leaf; tails, back to n
                if m and s.rng.uniform() * sum(s.drift**j for j in range(m + 1)) < 1:
                    self.pad = m
                elif m:
                    s.stats.pad_returns += 1
            return ev
        if root:
            self._root_misses += 1
            if self.choice.proves_dead_ends:
                raise DeadEndError(
                    "every move from the root has zero weight (V^ or tau is 0 for all children): "
                    "no response can succeed under this verifier; check the verifier, or raise "
                    "the temperature / top-k"
                )
            if self._root_misses >= self.max_root_retries:
                raise RootDeadEnd
            return None
        return self._move(n.parent) if self.backtrack else self.restart()


@dataclass
class VGB(Sampler):
    """Verifier-guided backtracking. ``drift`` (lambda in (0, 1]) multiplies the parent weight:
    1 is the paper's walk; smaller values reach a leaf in about D / (1 - 2p) steps instead of
    about D^2 (p: probability of a step up) and, with padding, keep the leaf law pi_ref * tau,
    but climb out of a bad subtree more rarely (the lazy walk's T grows like lambda^-D).
    ``choice``: how children are drawn (default: the exact ``Rejection(8)``)."""

    choice: ChildChoice = field(default_factory=lambda: Rejection(DEFAULT_CANDIDATES))
    drift: float = 1.0
    lazy: bool = False
    pad: bool = True  # pad shallow leaves to depth D (see the module docstring)
    steps_per_try: int | None = None  # theory variant: T (default: default_steps_per_try)
    max_tries: int | None = None  # theory variant: tries (default: default_max_tries)
    max_root_retries: int = DEFAULT_MAX_ROOT_RETRIES

    @property
    def name(self) -> str:  # type: ignore[override]
        return "vgb-lazy" if self.lazy else "vgb"

    def _run(self, run):
        walk = Walk(
            run, self.choice, lazy=self.lazy, pad=self.pad, max_root_retries=self.max_root_retries
        )
        if not self.lazy:
            while not walk.at_leaf:
                ev = walk.step()
                if ev is not None:
                    yield ev
            return walk.node, None
        d = run.max_depth
        T = self.steps_per_try or default_steps_per_try(d, self.drift)
        tries = self.max_tries or default_max_tries(d, self.drift)
        if T < 1 or tries < 1:
            raise ConfigError("steps_per_try and max_tries must be >= 1")
        for attempt in range(tries):
            for _ in range(T):
                ev = walk.step()
                if ev is not None:
                    yield ev
            if walk.at_leaf:
                return walk.node, None
            if attempt + 1 < tries:
                ev = walk.restart()
                if ev is not None:
                    yield ev
        return walk.node, "budget"


@dataclass
class ActionLevelRS(Sampler):
    """Locally constrained / value-guided decoding: next action with probability proportional to
    pi_ref(a|s) * V^(s.a); never moves up. A dead end restarts from the root (at most
    ``max_restarts`` times). Exact when V^ = V*, whatever the leaf depths."""

    choice: ChildChoice = field(default_factory=lambda: Rejection(DEFAULT_CANDIDATES))
    max_restarts: int = 1000
    max_root_retries: int = DEFAULT_MAX_ROOT_RETRIES

    name = "action-rs"

    def _run(self, run):
        walk = Walk(run, self.choice, backtrack=False, max_root_retries=self.max_root_retries)
        while not walk.at_leaf:
            if run.stats.restarts > self.max_restarts:
                return walk.node, "budget"
            ev = walk.step()
            if ev is not None:
                yield ev
        return walk.node, None
