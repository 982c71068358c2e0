"""Forward-only baselines that VGB is compared with (paper, Section 3 and the Dyck experiment).

- ``Plain``: sample from pi_ref.
- ``OutcomeLevelRS``: whole responses from pi_ref, accepted with probability tau / bound; at most
  ``max_tries`` (then the last one, ``finish_reason="rejected"``).
- ``BestOfN``: n responses from pi_ref, keep the one with the largest tau (first on ties).
- ``BlockBestOfN``: at each node draw n actions (blocks of ``actions``), keep the one with the
  largest V^ (tau at leaves).
- ``BlockRS``: at each node draw actions one by one and accept each with probability
  V^ / bound; after n rejections keep the best-valued one drawn.
(``ActionLevelRS`` lives in ``mlx_vgb.vgb``: it is VGB without the parent move.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ConfigError, VerifierError
from .results import Append, Backtrack
from .run import Run
from .sampler import Sampler
from .tree import Node


def _check_n(n: int, what: str = "n") -> None:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {n!r}")


def _rollouts(run: Run, starts: list[Node]) -> list[Node]:
    """Complete each start node with pi_ref (batched), counting one step per action."""
    rows = list(starts)
    while True:
        active = [i for i, n in enumerate(rows) if not n.is_leaf]
        if not active:
            return rows
        run.count_step()
        for i, n in zip(active, run.sample_blocks([rows[i] for i in active])):
            rows[i] = n


def _descend(run: Run, pick: Callable[[Node], Node]):
    """From the root to a leaf, one action per step chosen by ``pick(node)``; yields Append."""
    node = run.tree.root
    while not node.is_leaf:
        run.count_step()
        nxt = pick(node)
        run.visit(nxt)
        yield Append(nxt.tokens[len(node) :], nxt.depth, len(nxt), run.stats.steps)
        node = nxt
    return node


def _draw(run: Run, node: Node) -> Node:
    (nxt,) = run.sample_blocks([node])
    return nxt


def _bound(run: Run) -> float:
    b = getattr(run.verifier, "bound", 1.0)
    if not b > 0:
        raise ConfigError(f"verifier bound must be > 0, got {b}")
    return b


@dataclass
class Plain(Sampler):
    name = "plain"
    needs_verifier = False

    def _run(self, run):
        node = yield from _descend(run, lambda n: _draw(run, n))
        return node, None


@dataclass
class OutcomeLevelRS(Sampler):
    max_tries: int = 64
    name = "outcome-rs"

    def _run(self, run):
        _check_n(self.max_tries, "max_tries")
        bound = _bound(run)
        for t in range(self.max_tries):
            node = yield from _descend(run, lambda n: _draw(run, n))
            tau = run.tilt_of(node)
            if tau > bound * (1 + 1e-9):
                raise VerifierError(f"tilt {tau:.4g} exceeds the verifier bound {bound:.4g}")
            if run.rng.uniform() < tau / bound:
                return node, None
            if t + 1 < self.max_tries:
                run.stats.restarts += 1
                run.stats.backtracks += 1
                run.current = run.tree.root
                yield Backtrack(len(node), 0, 0, run.stats.steps)
        return node, "rejected"


@dataclass
class BestOfN(Sampler):
    n: int = 8
    name = "bon"

    def _run(self, run):
        _check_n(self.n)
        leaves = _rollouts(run, [run.tree.root] * self.n)
        run.ensure_values(leaves)
        best = leaves[int(np.argmax([c.log_value for c in leaves]))]
        run.visit(best)
        yield Append(best.tokens, best.depth, len(best), run.stats.steps)
        return best, None


@dataclass
class BlockBestOfN(Sampler):
    n: int = 8
    name = "block-bon"

    def _run(self, run):
        _check_n(self.n)

        def best_block(node):
            children = run.sample_blocks([node] * self.n)
            run.ensure_values(children)
            return children[int(np.argmax([c.log_value for c in children]))]

        node = yield from _descend(run, best_block)
        return node, None


@dataclass
class BlockRS(Sampler):
    n: int = 8
    name = "block-rs"

    def _run(self, run):
        _check_n(self.n)
        log_b = math.log(_bound(run))

        def accepted_block(node):
            drawn = []
            for _ in range(self.n):
                c = _draw(run, node)
                run.ensure_values([c])
                drawn.append(c)
                if math.log(run.rng.uniform() + 1e-300) < c.log_value - log_b:
                    return c
                run.stats.backtracks += 1
            return max(drawn, key=lambda x: x.log_value)

        node = yield from _descend(run, accepted_block)
        return node, None
