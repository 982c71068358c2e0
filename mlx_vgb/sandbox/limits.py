"""Limits, verdicts and results of a sandboxed run (host side; see docs/sandbox.md)."""

import enum
import math
import signal
from dataclasses import dataclass, fields

from ..errors import ConfigError

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 512
DEFAULT_MAX_OUTPUT_BYTES = 1_000_000
DEFAULT_MAX_PROCESSES = 32
DEFAULT_MAX_FILE_MB = 16
DEFAULT_DISK_MB = 64
# As root, each run gets a fresh uid from [SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_COUNT):
# RLIMIT_NPROC then counts only that run's processes, and stragglers can be found by uid.
SANDBOX_UID_BASE = 0x7F000000
SANDBOX_UID_COUNT = 1 << 20
_MIN_MEMORY_MB = 64
# Exit status of a sandboxed interpreter whose setup failed (bootstrap.py uses the same).
SETUP_FAILED = 125


class Verdict(str, enum.Enum):
    PASSED = "passed"  # exit status 0 (run_tests: the tests ran to their end and exited 0)
    FAILED = "failed"  # non-zero exit status: an exception, a failed assert, a syntax error
    TIMED_OUT = "timed_out"  # wall-clock or CPU limit reached
    CRASHED = "crashed"  # killed by a signal, or the sandbox itself could not run it
    MEMORY_EXCEEDED = "memory_exceeded"  # MemoryError under the address-space limit
    OUTPUT_EXCEEDED = "output_exceeded"  # printed more than max_output_bytes; killed

    @property
    def base(self) -> "Verdict":
        """One of passed / failed / timed_out / crashed."""
        if self in (Verdict.MEMORY_EXCEEDED, Verdict.OUTPUT_EXCEEDED):
            return Verdict.FAILED
        return self


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_processes: int = DEFAULT_MAX_PROCESSES
    max_file_mb: int = DEFAULT_MAX_FILE_MB
    disk_mb: int = DEFAULT_DISK_MB

    def __post_init__(self) -> None:
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise ConfigError(f"timeout_s must be a positive finite number of seconds, got {t!r}")
        minimum = {
            "memory_mb": _MIN_MEMORY_MB,
            "max_output_bytes": 0,
            "max_processes": 1,
            "max_file_mb": 0,
            "disk_mb": 1,
        }
        for name, low in minimum.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")

    @property
    def cpu_s(self) -> int:
        """RLIMIT_CPU per process: the wall limit rounded up, plus one second."""
        return math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class SandboxResult:
    verdict: Verdict
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool  # stdout or stderr hit max_output_bytes; the rest was discarded
    reason: str
    isolation: tuple = ()  # kernel isolation in force: net, pid, home, fs, uid
    # run_tests: the program's own process (its output, exit status); the fields above are
    # the tests' process, whose outcome is the verdict. None for run_python.
    program: "SandboxResult | None" = None

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASSED


def limits_from(kwargs: dict) -> SandboxLimits:
    """SandboxLimits from keyword arguments; unknown names raise ConfigError (a ValueError)."""
    names = {f.name for f in fields(SandboxLimits)}
    unknown = set(kwargs) - names
    if unknown:
        raise ConfigError(f"unknown sandbox limits {sorted(unknown)}; valid: {sorted(names)}")
    return SandboxLimits(**kwargs)


def judge(
    rc: int | None,
    timed_out: bool,
    overflow: bool,
    completed: bool,
    require_completion: bool,
    stderr: str,
    limits: SandboxLimits,
) -> tuple:
    """(verdict, reason) of one sandboxed process from how it ended."""
    memory = "MemoryError" in stderr[-2000:]
    if timed_out:
        return Verdict.TIMED_OUT, f"wall-clock limit of {limits.timeout_s:g} s reached"
    if overflow:
        return Verdict.OUTPUT_EXCEEDED, f"output exceeded {limits.max_output_bytes} bytes"
    if rc is None:
        return Verdict.CRASHED, "the sandboxed process did not exit"
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return Verdict.TIMED_OUT, f"CPU limit of {limits.cpu_s} s reached"
        if memory:
            return Verdict.MEMORY_EXCEEDED, f"memory limit of {limits.memory_mb} MB reached"
        try:
            return Verdict.CRASHED, f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return Verdict.CRASHED, f"killed by signal {sig}"
    if rc == SETUP_FAILED and "mlx_vgb.sandbox: " in stderr:
        return Verdict.CRASHED, "sandbox setup failed: " + stderr.strip().splitlines()[-1]
    if rc == 0:
        if require_completion and not completed:
            return Verdict.FAILED, "exited with status 0 before the tests finished"
        return Verdict.PASSED, "exit status 0"
    if memory:
        return Verdict.MEMORY_EXCEEDED, f"memory limit of {limits.memory_mb} MB reached"
    return Verdict.FAILED, f"exit status {rc}"
