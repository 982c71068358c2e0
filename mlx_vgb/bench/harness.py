"""The skeleton every benchmark run shares: settings (quick / full sizes, flags override), a
warm-up so the first sampler is not charged for kernel compilation, timed samples."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence


def settings(args, full: dict, quick: dict, keys: Iterable[str]) -> dict:
    """The sizes of this run: ``quick`` or ``full``, then every flag in ``keys`` the user set."""
    cfg = dict(quick if args.quick else full)
    for k in keys:
        if getattr(args, k, None) is not None:
            cfg[k] = getattr(args, k)
    cfg["seed"] = args.seed
    return cfg


def warm_up(lm, actions=None, prompt: Sequence[int] = (1, 2, 3)) -> None:
    """Two tokens of plain sampling: MLX compiles its kernels on first use."""
    from ..baselines import Plain

    kw = {} if actions is None else {"actions": actions}
    Plain(horizon=2, **kw).sample(lm, None, prompt=list(prompt), seed=1)


def timed_sample(sampler, lm, verifier, prompt, seed: int):
    """(result, wall seconds) of one sample."""
    t0 = time.perf_counter()
    r = sampler.sample(lm, verifier, prompt=prompt, seed=seed)
    return r, time.perf_counter() - t0
