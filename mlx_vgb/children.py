"""How a walk step picks among the parent and the children of a node (paper, Section 4).

Weights, in log space (``parent_logw`` = log(lambda * V^(s)), None where the parent is not an
option):
- ``Enumerate``: every child a with pi_ref(a|s) > 0, weight pi_ref(a|s) * V^(s.a); exact.
  Needs single-token actions and a small action set -- or pi_ref truncated by top-k / top-p,
  which changes pi_ref.
- ``Candidates(k)``: k children z_1..z_k drawn from pi_ref(.|s) (tokens or whole blocks);
  child i weighs V^(s.z_i), the parent k * lambda * V^(s). Unbiased for the exact weights.
- ``Rejection()``: propose the parent or a pi_ref child with probability 1/2 each, accept with
  probability weight / bound; exact whatever the action set, costs one V^ per proposal.

``choose`` returns the node to move to, or None when every weight it saw is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, VerifierError
from .search import Search
from .tree import Node


class ChildChoice:
    exact: bool = False  # a None from choose() at the root means "no move can ever have weight"

    def choose(self, search: Search, node: Node, parent_logw: float | None) -> Node | None:
        raise NotImplementedError  # pragma: no cover


def _pick(search: Search, options: list[Node], logw: list[float] | np.ndarray) -> Node | None:
    logw = np.asarray(logw, dtype=np.float64)
    if not np.isfinite(logw).any():
        return None
    return options[search.rng.choice_logweights(logw)]


@dataclass(frozen=True)
class Enumerate(ChildChoice):
    exact = True

    def choose(self, search, node, parent_logw):
        if node.kids is None:
            kids, logp = search.all_children(node)
            search.ensure_values(kids)
            node.kids = (kids, list(logp + np.array([c.value for c in kids])))
        kids, child_logw = node.kids
        logw = list(child_logw)
        options = list(kids)
        if parent_logw is not None:
            options.append(node.up)
            logw.append(parent_logw)
        return _pick(search, options, logw)


@dataclass(frozen=True)
class Candidates(ChildChoice):
    k: int = 8

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"number of candidates K must be an integer >= 1, got {self.k!r}")

    def choose(self, search, node, parent_logw):
        kids = search.sample_blocks([node] * self.k)
        search.ensure_values(kids)
        logw = [c.value for c in kids]
        options = list(kids)
        if parent_logw is not None:
            options.append(node.up)
            logw.append(math.log(self.k) + parent_logw)
        return _pick(search, options, logw)


@dataclass(frozen=True)
class Rejection(ChildChoice):
    """``bound``: an upper bound of V^ and tau (default: the verifier's ``bound`` attribute, or 1).
    After ``max_proposals`` rejections in a row the node counts as a dead end."""

    bound: float | None = None
    max_proposals: int = 10_000

    def choose(self, search, node, parent_logw):
        bound = self.bound if self.bound is not None else getattr(search.verifier, "bound", 1.0)
        if not bound > 0:
            raise ConfigError(f"rejection bound must be > 0, got {bound}")
        # leaf children carry tau * lambda^(depth - D) >= tau: raise the common bound to match
        log_b = math.log(bound) + max(0.0, (node.depth + 1 - search.max_depth) * search.log_drift)
        rng = search.rng
        for _ in range(self.max_proposals):
            if parent_logw is not None and rng.uniform() < 0.5:
                search.stats.proposals += 1
                if math.log(rng.uniform() + 1e-300) < parent_logw - log_b:
                    return node.up
                continue
            (child,) = search.sample_blocks([node])
            search.ensure_values([child])
            if child.value > log_b + 1e-9:
                raise VerifierError(
                    f"value {math.exp(child.value):.4g} exceeds the rejection bound {bound:.4g}; "
                    "pass Rejection(bound=...) or set the verifier's `bound` attribute")
            if math.log(rng.uniform() + 1e-300) < child.value - log_b:
                return child
        return None
