"""Verifier functions that fail mid-run, for the app's fault tests (imported by the app process
as ``tests.faulty_verifiers:...``)."""


def crash_late(text: str, complete: bool) -> float:
    if len(text) > 3:
        raise RuntimeError("verifier crashed on purpose")
    return 1.0


def nan_late(text: str, complete: bool) -> float:
    return float("nan") if len(text) > 3 else 1.0


def slow_never_done(text: str, complete: bool) -> float:
    """20 ms a call; 1 inside, 0 at every leaf: a walk that goes on until interrupted. The
    first call creates the file named by $MLX_VGB_TEST_STARTED, if set (the walk has begun)."""
    import os
    import time

    started = os.environ.get("MLX_VGB_TEST_STARTED")
    if started and not os.path.exists(started):
        open(started, "w").close()
    time.sleep(0.02)
    return 0.0 if complete else 1.0
