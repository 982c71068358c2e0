"""Run untrusted Python (model-written programs and tests) in separate, limited processes.

Each run starts a fresh interpreter in its own session with a private temporary working
folder, a minimal environment, resource limits (wall clock, CPU, address space, processes,
file size, no core dumps) and a capped read of its output. On Linux, when permitted (as root,
or where unprivileged user namespaces are allowed), it also runs in new network, mount and
PID namespaces: no network, a read-only filesystem except its working folder (a small tmpfs),
home folders masked, and every process it started killed with it. As root it runs as a fresh
unprivileged uid. Elsewhere an in-process audit hook blocks sockets, ctypes, exec and writes
outside the working folder (best effort).

`run_tests` runs the program and the tests in two such interpreters: the tests see the
program's functions and objects only through proxies that exchange plain data over a pipe, so
the program cannot reach the asserts or the verdict. See docs/sandbox.md.

Layout: host side `host.py` (spawn, supervise, judge), `procs.py` (sandbox uids, killing),
`limits.py` (limits, verdicts, results); child side `bootstrap.py` (isolation, limits),
`runner.py` (the three roles), `codec.py` (the plain-data channel).
"""

from .host import run_python, run_tests
from .limits import (
    DEFAULT_DISK_MB,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    SANDBOX_UID_BASE,
    SANDBOX_UID_COUNT,
    SandboxLimits,
    SandboxResult,
    Verdict,
)

__all__ = [
    "DEFAULT_DISK_MB",
    "DEFAULT_MAX_FILE_MB",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "SANDBOX_UID_BASE",
    "SANDBOX_UID_COUNT",
    "SandboxLimits",
    "SandboxResult",
    "Verdict",
    "run_python",
    "run_tests",
]
