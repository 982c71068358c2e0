"""How a walk step picks among the parent and the children of a node (paper, Section 4).

The exact step from node s moves to the parent with probability proportional to lambda * V^(s)
and to a child s.a with probability proportional to pi_ref(a|s) * V^(s.a) (V^ = tau at a leaf).
``parent_logw`` = log(lambda * V^(s)), None where the parent is not an option (the root,
ActionLevelRS).

- ``Enumerate()``: every child a with pi_ref(a|s) > 0, weighed exactly. Exact. Needs
  single-token actions and a small action set (or pi_ref truncated by top-k / top-p, which
  changes pi_ref).
- ``Rejection(k)``: the exact step for any action set (tokens or blocks), by rejection. A
  proposal is the parent with probability lambda / (1 + lambda), else a child z ~ pi_ref(.|s);
  it is accepted with probability V^(s) / B (parent) or V^(s.z) / B (child), B >= every V^ and
  tau (``bound``, else the verifier's ``bound`` attribute, else 1). Proposals come in batches of
  k (one batched pi_ref draw, one batched V^ call); the first accepted one, in draw order, is
  taken, and a batch with none accepted is followed by another. *Proof of exactness*: the
  proposals are i.i.d. and the batches only group them, so the taken proposal is the first
  accepted one of an i.i.d. sequence, whose law is the law of one proposal given acceptance:
  P(parent) proportional to lambda / (1 + lambda) * V^(s) / B, P(s.a) proportional to
  1 / (1 + lambda) * pi_ref(a|s) * V^(s.a) / B -- the exact step's ratio lambda V^(s) :
  pi_ref(a|s) V^(s.a). Each proposal is accepted with probability
  (lambda V^(s) + E_pi_ref V^(s.z)) / ((1 + lambda) B), i.e. V^(s) / B for the exact value:
  the step costs about k * ceil(B / (k V^(s))) V^ evaluations. After ``max_proposals``
  (default 1024) rejections in a row -- or 64 when every positive weight drawn is below 1e-6 x B,
  where rejection is hopeless -- the step falls back to the self-normalized choice among the
  children drawn, counts itself in ``SampleStats.inexact_steps``, and the rest of the run uses
  ``SelfNormalized(k)``: only then is the walk not exact (with acceptance >= 0.01 that happens
  with probability < 3e-5 per step). Zero weights (a constraint verifier's dead children) do not
  count as hopeless. A verifier whose values sit far below its ``bound`` -- e.g. letter
  avoidance's alpha^(H - h) -- falls back at its first step: choose ``SelfNormalized`` for it,
  or give a tighter ``bound``.
- ``SelfNormalized(k)`` (formerly ``Candidates``; the name stays as an alias): k children
  z_1..z_k drawn from pi_ref(.|s); child i weighs V^(s.z_i), the parent k * lambda * V^(s).
  Fast (exactly k V^ evaluations, never loops) but *biased* for finite k: the ratio of the
  sampled weights is not the ratio of their expectations (measured on trees in
  ``docs/benchmarks.md``).

``choose`` returns the node to move to, or None when every weight it saw is zero.
``CHOICES`` maps the names used by the CLI and the app to the rules; ``make_choice`` builds one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, VerifierError
from .run import Run
from .tree import Node

DEFAULT_CANDIDATES = 8
DEFAULT_MAX_PROPOSALS = 1024
HOPELESS_AFTER = 64  # proposals after which tiny positive weights (below) end the step early
LOG_HOPELESS = math.log(1e-6)


class ChildChoice:
    exact: bool = False  # the step's law is the exact walk step
    proves_dead_ends: bool = False  # a None from choose() means every child has weight zero

    def choose(self, run: Run, node: Node, parent_logw: float | None) -> Node | None:
        raise NotImplementedError  # pragma: no cover


def _check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"number of candidates K must be an integer >= 1, got {k!r}")


def _pick(run: Run, options: list[Node], logw: list[float] | np.ndarray) -> Node | None:
    logw = np.asarray(logw, dtype=np.float64)
    run.note_options(options, logw)
    if not np.isfinite(logw).any():
        return None
    return options[run.rng.choice_logweights(logw)]


@dataclass(frozen=True)
class Enumerate(ChildChoice):
    exact = True
    proves_dead_ends = True

    def choose(self, run, node, parent_logw):
        if node.children is None:
            children, logp = run.all_children(node)
            run.ensure_values(children)
            node.children = (children, list(logp + np.array([c.log_value for c in children])))
        children, child_logw = node.children
        logw = list(child_logw)
        options = list(children)
        if parent_logw is not None:
            options.append(node.parent)
            logw.append(parent_logw)
        return _pick(run, options, logw)


@dataclass(frozen=True)
class Rejection(ChildChoice):
    """The exact step by batched rejection (see the module docstring)."""

    k: int = DEFAULT_CANDIDATES
    bound: float | None = None
    max_proposals: int = DEFAULT_MAX_PROPOSALS

    exact = True

    def __post_init__(self):
        _check_k(self.k)
        if self.max_proposals < 1:
            raise ConfigError(f"max_proposals must be >= 1, got {self.max_proposals!r}")

    def choose(self, run, node, parent_logw):
        if run.stats.inexact_steps:  # this verifier defeated rejection once: the fast rule now
            return _self_normalized(run, node, parent_logw, self.k)
        bound = self.bound if self.bound is not None else getattr(run.verifier, "bound", 1.0)
        if not bound > 0:
            raise ConfigError(f"rejection bound must be > 0, got {bound}")
        log_b = math.log(bound)
        rng = run.rng
        p_parent = 0.0
        if parent_logw is not None:
            p_parent = run.drift / (1 + run.drift)
            log_v = parent_logw - run.log_drift  # log V^(s)
            if log_v > log_b + 1e-9:
                self._too_big(log_v, bound)
        drawn, rejected, top = 0, [], -math.inf  # top: the largest positive log weight seen
        while drawn < self.max_proposals:
            if drawn >= HOPELESS_AFTER and top < log_b + LOG_HOPELESS:
                break  # all weights seen > 0 sit below 1e-6 x bound: hopeless, fall back now
            k = min(self.k, self.max_proposals - drawn)
            drawn += k
            up = rng.uniform(k) < p_parent
            n_up = int(up.sum())
            children = iter(run.sample_blocks([node] * (k - n_up)) if n_up < k else ())
            run.stats.proposals += n_up
            batch = [node.parent if u else next(children) for u in up]
            run.ensure_values([c for c, u in zip(batch, up) if not u])
            run.note_options(batch, [log_v if u else c.log_value for c, u in zip(batch, up)])
            log_u = np.log(rng.uniform(k) + 1e-300)
            for c, u, lu in zip(batch, up, log_u):
                lv = log_v if u else c.log_value
                if not u and lv > log_b + 1e-9:
                    self._too_big(lv, bound)
                if lu < lv - log_b:
                    return c
                if lv > -math.inf:
                    top = max(top, lv)
            rejected.extend(c for c, u in zip(batch, up) if not u)
        # every proposal rejected (acceptance below ~1 / max_proposals, e.g. V^ far below its
        # bound): the self-normalized step over the children drawn, counted as inexact
        if not rejected or not any(c.log_value > -math.inf for c in rejected) and p_parent == 0:
            return None
        run.stats.inexact_steps += 1
        return _choose_among(run, node, parent_logw, rejected)

    @staticmethod
    def _too_big(log_v: float, bound: float):
        raise VerifierError(
            f"value {math.exp(log_v):.4g} exceeds the rejection bound {bound:.4g}; pass "
            "Rejection(bound=...) or set the verifier's `bound` attribute"
        )


@dataclass(frozen=True)
class SelfNormalized(ChildChoice):
    """The fast, biased K-candidate step (see the module docstring)."""

    k: int = DEFAULT_CANDIDATES

    def __post_init__(self):
        _check_k(self.k)

    def choose(self, run, node, parent_logw):
        return _self_normalized(run, node, parent_logw, self.k)


def _self_normalized(run: Run, node: Node, parent_logw: float | None, k: int) -> Node | None:
    children = run.sample_blocks([node] * k)
    run.ensure_values(children)
    return _choose_among(run, node, parent_logw, children)


def _choose_among(run, node, parent_logw, children: list[Node]) -> Node | None:
    """Child i weighs V^(s.z_i), the parent len(children) * lambda * V^(s)."""
    logw = [c.log_value for c in children]
    options = list(children)
    if parent_logw is not None:
        options.append(node.parent)
        logw.append(math.log(len(children)) + parent_logw)
    return _pick(run, options, logw)


Candidates = SelfNormalized  # the biased rule's former name, kept for existing code

CHOICES: dict[str, type[ChildChoice]] = {
    "rejection": Rejection,
    "enumerate": Enumerate,
    "self-normalized": SelfNormalized,
}
DEFAULT_CHOICE = "rejection"
CHOICE_HELP = {
    "rejection": "exact; K proposals per batch, any action set (default)",
    "enumerate": "exact; every child valued, single-token actions only (K unused)",
    "self-normalized": "fast, biased for finite K; exactly K children valued per step",
}


def make_choice(name: str = DEFAULT_CHOICE, k: int = DEFAULT_CANDIDATES) -> ChildChoice:
    """The child-choice rule called ``name`` (a key of ``CHOICES``) with ``k`` candidates."""
    rule = CHOICES.get(name)
    if rule is None:
        opts = "; ".join(f"{n}: {h}" for n, h in CHOICE_HELP.items())
        raise ConfigError(f"unknown child-choice rule {name!r}; choose one of: {opts}")
    return rule() if rule is Enumerate else rule(k)
