"""Verifier functions that fail mid-run, for the app's fault tests (imported by the app process
as ``tests.faulty_verifiers:...``)."""


def crash_late(text: str, complete: bool) -> float:
    if len(text) > 3:
        raise RuntimeError("verifier crashed on purpose")
    return 1.0


def nan_late(text: str, complete: bool) -> float:
    return float("nan") if len(text) > 3 else 1.0
