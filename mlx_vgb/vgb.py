"""VGB: a random walk on the tree of prefixes (paper, Algorithm 1), and ActionLevelRS, the same
walk without the move to the parent.

From node s (depth h) the walk moves to the parent with weight lambda * V^(s) and to a child s.a
with weight pi_ref(a|s) * V^(s.a) (``mlx_vgb.children`` says how children are drawn); at a leaf
V^ = tau. The walk is reversible with edge conductance pi_ref(y) V^(y) lambda^-depth(y), so its
stationary law on leaves is pi_ref * tau whatever the errors of V^ inside the tree.

Variants: ``VGB()`` is the practical one of the experiments (no laziness, stop at the first leaf);
``VGB(lazy=True)`` is the theory one (stay with probability 1/2, run T steps, output the node if
it is a leaf, else restart from the root, up to ``max_tries`` times).

Dead ends: a node where every weight is zero is left by a forced move to its parent (VGB) or a
restart from the root (ActionLevelRS); if the root itself is a certain dead end
(``Enumerate``), or ``max_root_retries`` draws in a row at the root all weigh zero,
``DeadEndError`` is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .children import Candidates, ChildChoice
from .errors import ConfigError, DeadEndError
from .results import Append, Backtrack, Event
from .sampler import Sampler
from .search import Search
from .tree import Node

DEFAULT_CANDIDATES = 8
DEFAULT_MAX_ROOT_RETRIES = 32


def default_steps_per_try(depth: int, drift: float = 1.0) -> int:
    """T for the lazy walk: about twice the time the depth needs to cross the tree (D^2 for the
    symmetric walk, D (1 + lambda) / (1 - lambda) with drift), times 2 for laziness, plus 8 D."""
    cross = depth * depth if drift >= 1 else min(depth * depth, depth * (1 + drift) / (1 - drift))
    return math.ceil(4 * cross + 8 * depth)


class Walk:
    """The walk's state: one ``step()`` moves (or stays) and returns the event, if any."""

    def __init__(self, search: Search, choice: ChildChoice, *, backtrack: bool = True,
                 lazy: bool = False, max_root_retries: int = DEFAULT_MAX_ROOT_RETRIES):
        self.search, self.choice = search, choice
        self.backtrack, self.lazy = backtrack, lazy
        self.max_root_retries = max_root_retries
        self.node: Node = search.tree.root
        self._root_misses = 0

    def _move(self, target: Node) -> Event:
        s, n = self.search, self.node
        self.node = s.current = target
        if len(target) > len(n):
            return Append(target.tokens[len(n):], target.depth, len(target), s.stats.steps)
        s.stats.backtracks += 1
        return Backtrack(len(n) - len(target), target.depth, len(target), s.stats.steps)

    def restart(self) -> Event | None:
        s, n = self.search, self.node
        self.node = s.current = s.tree.root
        s.stats.restarts += 1
        if len(n):
            return Backtrack(len(n), 0, 0, s.stats.steps)
        return None

    def step(self) -> Event | None:
        s, n = self.search, self.node
        s.count_step()
        if self.lazy and s.rng.uniform() < 0.5:
            return None
        if n.is_leaf:
            return self._move(n.up) if self.backtrack else self.restart()
        root = n is s.tree.root
        parent_logw = None
        if self.backtrack and not root:
            s.ensure_values([n])
            parent_logw = s.log_drift + n.value
        target = self.choice.choose(s, n, parent_logw)
        if target is not None:
            self._root_misses = 0
            return self._move(target)
        if root:
            self._root_misses += 1
            if self.choice.exact or self._root_misses >= self.max_root_retries:
                raise DeadEndError(
                    "every move from the root has zero weight (V^ or tau is 0 for all children "
                    f"tried, {self._root_misses} draw(s)): no response can succeed under this "
                    "verifier; check the verifier, or raise the temperature / candidates")
            return None
        return self._move(n.up) if self.backtrack else self.restart()


@dataclass
class VGB(Sampler):
    """Verifier-guided backtracking. ``drift`` (lambda in (0, 1]) multiplies the parent weight:
    1 is the paper's walk; smaller values reach a leaf in about H / (1 - 2p) steps instead of
    about H^2 (p: probability of a step up), keeping the leaf law pi_ref * tau."""

    choice: ChildChoice = field(default_factory=lambda: Candidates(DEFAULT_CANDIDATES))
    drift: float = 1.0
    lazy: bool = False
    steps_per_try: int | None = None  # theory variant: T (default: default_steps_per_try)
    max_tries: int | None = None  # theory variant: restarts (default 8 D)
    max_root_retries: int = DEFAULT_MAX_ROOT_RETRIES

    @property
    def name(self) -> str:  # type: ignore[override]
        return "vgb-lazy" if self.lazy else "vgb"

    def _run(self, search):
        walk = Walk(search, self.choice, lazy=self.lazy, max_root_retries=self.max_root_retries)
        if not self.lazy:
            while not walk.node.is_leaf:
                ev = walk.step()
                if ev is not None:
                    yield ev
            return walk.node, None
        d = search.max_depth
        T = self.steps_per_try or default_steps_per_try(d, self.drift)
        tries = self.max_tries or 8 * d
        if T < 1 or tries < 1:
            raise ConfigError("steps_per_try and max_tries must be >= 1")
        for attempt in range(tries):
            for _ in range(T):
                ev = walk.step()
                if ev is not None:
                    yield ev
            if walk.node.is_leaf:
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
    ``max_restarts`` times)."""

    choice: ChildChoice = field(default_factory=lambda: Candidates(DEFAULT_CANDIDATES))
    max_restarts: int = 1000
    max_root_retries: int = DEFAULT_MAX_ROOT_RETRIES

    name = "action-rs"

    def _run(self, search):
        walk = Walk(search, self.choice, backtrack=False, max_root_retries=self.max_root_retries)
        while not walk.node.is_leaf:
            if search.stats.restarts > self.max_restarts:
                return walk.node, "budget"
            ev = walk.step()
            if ev is not None:
                yield ev
        return walk.node, None

