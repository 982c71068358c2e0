"""Per-step traces of a walk, for UIs: where the walk was, what it weighed, where it went.

A run records nothing unless a ``trace`` callable is given (``Sampler.start(..., trace=fn)``,
``mlx_vgb.generate.stream_generate(..., trace=fn)``); then ``fn(StepTrace)`` is called once per
walk step of VGB and ActionLevelRS (the pool baselines do not walk and record nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TRACED_OPTIONS = 64  # options kept per step (Rejection may draw thousands of proposals)


@dataclass(frozen=True)
class StepOption:
    """One option of a step: a candidate child (``up=False``) or the move to the parent."""

    tokens: tuple[int, ...]  # the option's prefix (tokens after the prompt)
    log_value: float | None  # log V^ (log tau at a leaf); None if the rule did not value it
    log_weight: float  # the rule's log weight (Rejection: log V^, accepted with V^ / B)
    up: bool = False


@dataclass(frozen=True)
class StepTrace:
    step: int  # the run's step count after this step
    node: tuple[int, ...]  # where the walk was
    depth: int  # its depth in actions
    log_value: float | None  # log V^ of the node (None: not valued, e.g. the root)
    options: tuple[StepOption, ...]  # what the rule weighed, in draw order (capped)
    target: tuple[int, ...] | None  # where the walk went (None: it stayed)
    move: str  # "child", "parent", "restart", "stay"
    rule: str  # the child-choice rule ("Rejection", "SelfNormalized", "Enumerate", "")
