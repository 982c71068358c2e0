"""The skeleton every benchmark run shares: settings (quick / full sizes, flags override), a
warm-up so the first sampler is not charged for kernel compilation, timed samples, and samples
run as jobs of the batched engine (``mlx_vgb.engine``), a window of ``--concurrency`` at once."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import TypeVar

from ..errors import ConfigError, VGBError

T = TypeVar("T")

# Draining (SIGUSR1): a long benchmark starts no new runs; the runs in flight finish and their
# rows are written, then it stops with DRAINED_STATUS (a rerun resumes). A run killed in flight
# is lost whole (a walk's tree cannot be resumed): a 16x walk of the 0.5B coder takes up to an
# hour here, so a kill at a deadline lost many; a drain started before it loses none.
_DRAIN = threading.Event()
DRAINED_STATUS = 75  # EX_TEMPFAIL: stopped on purpose, rerun to go on


class Drained(VGBError):
    """The benchmark was asked to drain (SIGUSR1) and stopped with runs not started."""


def drain_on_signal() -> bool:
    """SIGUSR1 asks the benchmark to drain (see ``_DRAIN``); False where the platform has no
    SIGUSR1 or this is not the main thread."""
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGUSR1, lambda *_: _DRAIN.set())
    return True


def draining() -> bool:
    """Whether a drain was asked for: start no new runs."""
    return _DRAIN.is_set()


def check_drained(left: int, what: str = "runs") -> None:
    """After a drained loop: raise ``Drained`` if ``left`` runs were never started."""
    if left and draining():
        raise Drained(
            f"drained (SIGUSR1): the {what} in flight finished and their rows are written; "
            f"{left} {what} not started: rerun the same command to resume"
        )


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
    """(result, seconds) of one sample: its wall time, or inside an engine job the job's own
    time (``Engine.job_seconds``: its turns plus its row-share of the batched forwards)."""
    from ..engine import current

    eng = current()
    clock = eng.job_seconds if eng is not None else time.perf_counter
    t0 = clock()
    r = sampler.sample(lm, verifier, prompt=prompt, seed=seed)
    return r, clock() - t0


def check_concurrency(n: int) -> int:
    """``--concurrency``: walks in the engine at once, at least 1."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(
            f"--concurrency must be a whole number >= 1 (1: one walk at a time), got {n!r}"
        )
    return n


def wall_note(concurrency) -> str:
    """What a sample's wall time is, for a report: its job's own time in the engine."""
    if concurrency in (None, 1):
        return "a response's wall time is its own (one walk at a time)"
    return (
        f"a response's wall time is its job's own time in the batched engine ({concurrency} "
        "walks at once: its turns plus its row-share of the batched forwards), not the elapsed "
        "time"
    )


def engine_samples(
    jobs: Sequence[Callable[[], T]],
    concurrency: int,
    on_done: Callable[[int, T], None] | None = None,
) -> tuple[list[T], dict]:
    """Run ``jobs`` (callables, one sample each, each with its own language model object) as
    jobs of one batched engine: submitted in order, at most ``concurrency`` in the engine at
    once, their forwards of a step served as one batched forward. ``on_done(i, value)`` runs in
    the calling thread as job i finishes (rows written as they come). Returns the values in
    job order and the engine's stats (``EngineStats`` as a dict, with the concurrency)."""
    from ..engine import Engine

    check_concurrency(concurrency)
    eng = Engine()
    finished: queue.Queue[int] = queue.Queue()
    values: list = [None] * len(jobs)
    live: dict = {}
    nxt = 0

    def wrapped(i: int, fn: Callable[[], T]) -> Callable[[], T]:
        def job() -> T:
            try:
                return fn()
            finally:
                finished.put(i)

        return job

    while (nxt < len(jobs) and not draining()) or live:
        while nxt < len(jobs) and len(live) < concurrency and not draining():
            live[nxt] = eng.submit(wrapped(nxt, jobs[nxt]))
            nxt += 1
        if not live:
            break  # drained
        i = finished.get()
        values[i] = live.pop(i).result()  # a job's error is raised here
        if on_done is not None:
            on_done(i, values[i])
    eng.close()
    check_drained(len(jobs) - nxt, "samples")
    return values, dict(asdict(eng.stats), concurrency=concurrency)
