"""Host side of the sandbox: start sandboxed interpreters, supervise them, judge the outcome.

`run_python` starts one interpreter (role "script"). `run_tests` starts two, side by side,
each fully sandboxed: the program's (role "program": runs the program, then answers requests)
and the tests' (role "tests": runs the tests against proxies of the program's names). They
are joined only by two pipes carrying plain data (`codec.py`). The verdict is the tests'
process's: exit status 0 and a per-run nonce on a status pipe that only it holds, written
after the tests' last line. The program can change anything in its own interpreter and
nothing in the tests'. See docs/sandbox.md.

The child side (`codec.py`, `runner.py`, `bootstrap.py`) is compiled once per host process and
sent as code objects with each run's config, so the child imports almost nothing.
"""

import marshal
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import bootstrap, codec, runner
from .limits import (
    DEFAULT_DISK_MB,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    SandboxLimits,
    SandboxResult,
    Verdict,
    judge,
    limits_from,
)
from .procs import allocate_uid, kill_all, own_process_count, release_uid

# How long to keep reading after the process that decides ended, for output still in pipes
# (and, in run_tests, for the program's process to see EOF and exit on its own).
_DRAIN_S = 0.2
# The wall limit counts the time the supervisor saw pass: it looks at the clock at least every
# _TICK_S, and a longer pause than _GAP_S between two looks (this process was stopped, e.g. by
# SIGSTOP, or starved of CPU) counts as one tick, so a program is not timed out for time in which
# its supervisor could not watch it (and, if stopped with it, it could not run).
_TICK_S = 0.25
_GAP_S = 1.0
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# The sandboxed interpreter runs this: load the child code and the config from the fd in
# argv[1] (a file already unlinked: no path to it exists), run the child code, enter.
_STUB = (
    "import marshal,os,sys\nwith open(int(sys.argv[1]),'rb') as f:\n"
    " c=marshal.load(f);a=marshal.load(f)\n"
    "g={'__name__':'mlx_vgb_sandbox_child'}\n"
    "for x in c:exec(x,g)\ng['bootstrap_entry'](a)\n"
)
_child_code = None


def _compiled_child() -> tuple:
    """The child-side modules, compiled once per host process (saves ~10 ms a run)."""
    global _child_code
    if _child_code is None:
        codes = []
        for module in (codec, runner, bootstrap):  # the order they are executed in
            with open(module.__file__, encoding="utf-8") as f:
                codes.append(compile(f.read(), module.__file__, "exec"))
        _child_code = tuple(codes)
    return _child_code


def _home_folders() -> list:
    homes = ["/root", "/home", "/Users", "/var/root", os.path.expanduser("~")]
    return [h for h in homes if h and h != "/"]


def _site_dirs() -> list:
    """The host's site-packages folders; the child starts with -S (site costs ~5 ms) and adds
    these itself, without running .pth files."""
    dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return [p for p in dict.fromkeys(dirs) if os.path.isdir(p)]


def _interpreter_paths() -> list:
    """What the sandboxed interpreter must still see when home folders are masked."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
    }
    paths.update(_site_dirs())
    return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})


def _readable_by_others(path: str) -> bool:
    """Whether a uid with no relation to the owner can reach `path` (its folders searchable)."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _darwin_profile(work: str) -> str:
    work = os.path.realpath(work).replace('"', "")
    return (
        "(version 1)(allow default)(deny network*)(deny file-write*)"
        f'(allow file-write* (subpath "{work}") (literal "/dev/null"))'
    )


def _command(config_fd: int, work: str) -> list:
    cmd = [sys.executable, "-I", "-S", "-B", "-c", _STUB, str(config_fd)]
    if sys.platform == "darwin" and shutil.which("sandbox-exec"):
        cmd = [shutil.which("sandbox-exec"), "-p", _darwin_profile(work)] + cmd
    return cmd


def _environment(work: str) -> dict:
    return {
        "PATH": _SAFE_PATH,
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


@dataclass
class _Child:
    """One sandboxed interpreter and what the host read from it."""

    proc: subprocess.Popen
    status_r: int
    uid: int | None
    base: str
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    status: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    exited: bool = False

    def in_pid_namespace(self) -> bool:
        return self.status.split(b"\n", 1)[0].find(b"pid") >= 0

    def kill(self) -> None:
        kill_all(self.proc.pid, self.uid, sweep=not self.in_pid_namespace())

    def lines(self) -> list:
        return self.status.decode("ascii", "replace").splitlines()

    def isolation(self) -> tuple:
        status = self.lines()
        return tuple(x for x in status[0].partition(" ")[2].split(",") if x) if status else ()

    def returncode(self) -> int | None:
        rc = self.proc.returncode
        if rc is not None and rc > 128 and f"signal {rc - 128}" in self.lines()[1:]:
            rc = 128 - rc  # killed by a signal inside the PID namespace (see bootstrap._init)
        return rc

    def close(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        os.close(self.status_r)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.base, ignore_errors=True)
        release_uid(self.uid)


def _spawn(
    role: str,
    code: str,
    limits: SandboxLimits,
    stdin: str,
    isolate: bool,
    channel: tuple = (),
    nonce: str = "",
) -> _Child:
    """Start one sandboxed interpreter in `role`; `channel` fds are passed to it."""
    uid = allocate_uid()
    base = None
    try:
        base = tempfile.mkdtemp(prefix="mlx-vgb-sandbox-")
        os.chmod(base, 0o711)  # traversable by the sandbox uid, not listable
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if uid is not None:
            os.chown(work, uid, uid)
        nproc = limits.max_processes
        if uid is None:  # RLIMIT_NPROC counts all of this user's processes
            nproc += own_process_count(os.getuid())
        status_r, status_w = os.pipe()
        cfg = {
            "role": role,
            "code": code,
            "work": work,
            "uid": uid,
            "status_fd": status_w,
            "channel": channel,
            "nonce": nonce,
            "isolate": isolate,
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "max_file_mb": limits.max_file_mb,
            "disk_mb": limits.disk_mb,
            "nproc": nproc,
            "preload": uid is not None and not all(map(_readable_by_others, _interpreter_paths())),
            "site_dirs": _site_dirs(),
            "mask": _home_folders(),
            "expose": _interpreter_paths() + [base],
        }
        # The config (the tests, the nonce) reaches the child as an fd to an unlinked file.
        config_path = os.path.join(base, "config")
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            marshal.dump(_compiled_child(), f)
            marshal.dump(cfg, f)
        config_fd = os.open(config_path, os.O_RDONLY)
        os.unlink(config_path)
        stdin_file = None
        if stdin:
            stdin_path = os.path.join(base, "stdin")
            with open(stdin_path, "wb") as f:
                f.write(stdin.encode("utf-8", "surrogateescape"))
            stdin_file = open(stdin_path, "rb")
        try:
            proc = subprocess.Popen(
                _command(config_fd, work),
                stdin=stdin_file or subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=_environment(work),
                start_new_session=True,
                pass_fds=(status_w, config_fd, *channel),
                close_fds=True,
            )
        finally:
            os.close(status_w)
            os.close(config_fd)
            if stdin_file is not None:
                stdin_file.close()
    except BaseException:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        release_uid(uid)
        raise
    return _Child(proc, status_r, uid, base)


def _supervise(children: list, main: _Child, limits: SandboxLimits, start: float) -> bool:
    """Read capped output until `main` ends (then the others get _DRAIN_S to end on their
    own) or a limit is hit; then kill everything. Returns whether the wall limit was hit."""
    streams = {}  # fd -> (child, buffer name, cap)
    for c in children:
        streams[c.proc.stdout.fileno()] = (c, "out", limits.max_output_bytes)
        streams[c.proc.stderr.fileno()] = (c, "err", limits.max_output_bytes)
        streams[c.status_r] = (c, "status", 4096)
    deadline = start + limits.timeout_s
    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    reading = set(streams)
    pidfds = {}  # readable when the process exits (Linux); elsewhere poll every 10 ms
    if hasattr(os, "pidfd_open"):
        try:
            for c in children:
                pidfds[os.pidfd_open(c.proc.pid)] = c
        except OSError:
            pass
    for fd in pidfds:
        sel.register(fd, selectors.EVENT_READ)
    blocking = len(pidfds) == len(children)
    ended_at = None
    timed_out = False
    seen, lost = start, 0.0  # the last look at the clock; the time not seen pass
    try:
        while reading and not any(c.overflow for c in children):
            real = time.monotonic()
            if real - seen > _GAP_S:
                lost += real - seen - _TICK_S
            seen = real
            now = real - lost
            for c in children:
                if not c.exited and c.proc.poll() is not None:
                    c.exited = True
                    c.kill()  # stragglers (the PID namespace already took them)
                    for fd in [fd for fd, owner in pidfds.items() if owner is c]:
                        sel.unregister(fd)
                        os.close(fd)
                        del pidfds[fd]
            if ended_at is None and main.exited:
                ended_at = now
            end = deadline if ended_at is None else min(deadline, ended_at + _DRAIN_S)
            if now >= end:
                timed_out = ended_at is None
                break  # past the drain time, something unkillable still holds a pipe
            wait = min(end - now, _TICK_S if blocking or ended_at is not None else 0.01)
            for key, _ in sel.select(wait):
                if key.fd in pidfds:
                    continue  # seen by proc.poll() on the next round
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    reading.discard(key.fd)
                    continue
                c, name, cap = streams[key.fd]
                buf = getattr(c, name)
                room = max(cap - len(buf), 0)
                buf += chunk[:room]
                c.overflow |= len(chunk) > room and name != "status"
    finally:
        for c in children:
            c.kill()
        sel.close()
        for fd in pidfds:
            os.close(fd)
    return timed_out


def _result(c: _Child, verdict: Verdict, reason: str, start: float, **kw) -> SandboxResult:
    return SandboxResult(
        verdict,
        c.returncode(),
        c.out.decode("utf-8", "replace"),
        c.err.decode("utf-8", "replace"),
        time.monotonic() - start,
        c.overflow,
        reason,
        c.isolation(),
        **kw,
    )


def _crashed(reason: str, start: float) -> SandboxResult:
    return SandboxResult(Verdict.CRASHED, None, "", "", time.monotonic() - start, False, reason)


def _run(code: str, limits: SandboxLimits, stdin: str, isolate: bool = True) -> SandboxResult:
    """Run `code` as a script; `isolate=False` skips kernel isolation (tests check the guard)."""
    start = time.monotonic()
    try:
        child = _spawn("script", code, limits, stdin, isolate)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return _crashed(f"sandbox could not run the program: {e!r}", start)
    try:
        timed_out = _supervise([child], child, limits, start)
    finally:
        child.close()
    stderr = child.err.decode("utf-8", "replace")
    verdict, reason = judge(
        child.returncode(), timed_out, child.overflow, False, False, stderr, limits
    )
    return _result(child, verdict, reason, start)


def _run_pair(
    program: str, tests: str, limits: SandboxLimits, stdin: str, isolate: bool = True
) -> SandboxResult:
    """The program and the tests in two sandboxed interpreters joined by a plain-data channel."""
    start = time.monotonic()
    children = []
    fds = []
    try:
        req_r, req_w = os.pipe()  # tests -> program
        fds += [req_r, req_w]
        rep_r, rep_w = os.pipe()  # program -> tests
        fds += [rep_r, rep_w]
        nonce = secrets.token_hex(16)
        children.append(_spawn("program", program, limits, stdin, isolate, (req_r, rep_w)))
        children.append(_spawn("tests", tests, limits, "", isolate, (rep_r, req_w), nonce))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        for c in children:
            c.kill()
            c.close()
        return _crashed(f"sandbox could not run the program: {e!r}", start)
    finally:
        for fd in fds:
            os.close(fd)
    prog, checker = children
    try:
        timed_out = _supervise(children, checker, limits, start)
    finally:
        for c in children:
            c.close()
    overflow = prog.overflow or checker.overflow
    p_err = prog.err.decode("utf-8", "replace")
    p_verdict, p_reason = judge(
        prog.returncode(),
        timed_out and not prog.exited,
        prog.overflow,
        False,
        False,
        p_err,
        limits,
    )
    program_result = _result(prog, p_verdict, p_reason, start)
    status = checker.lines()[1:]
    if timed_out or overflow or "program-gone" not in status:
        t_err = checker.err.decode("utf-8", "replace")
        verdict, reason = judge(
            checker.returncode(),
            timed_out,
            overflow,
            f"done {nonce}" in status,
            True,
            t_err,
            limits,
        )
    else:  # the program's process ended first: its end is the verdict (never a pass)
        verdict, reason = judge(prog.returncode(), False, False, False, True, p_err, limits)
        if prog.returncode() == 0:
            reason = "the program exited with status 0 before the tests finished"
        else:
            reason = f"the program ended before the tests finished: {reason}"
    isolation = tuple(x for x in checker.isolation() if x in prog.isolation())
    return SandboxResult(
        verdict,
        checker.returncode(),
        checker.out.decode("utf-8", "replace"),
        checker.err.decode("utf-8", "replace"),
        time.monotonic() - start,
        overflow,
        reason,
        isolation,
        program_result,
    )


def run_python(
    code: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    stdin: str = "",
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
    disk_mb: int = DEFAULT_DISK_MB,
) -> SandboxResult:
    """Run untrusted Python source in a sandbox. PASSED iff it exits with status 0.

    Never raises for anything the code does; raises ValueError for invalid arguments.
    """
    if not isinstance(code, str):
        raise ConfigError(f"code must be a str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise ConfigError(f"stdin must be a str, got {type(stdin).__name__}")
    limits = SandboxLimits(
        timeout_s, memory_mb, max_output_bytes, max_processes, max_file_mb, disk_mb
    )
    return _run(code, limits, stdin)


def run_tests(program: str, tests: str, *, stdin: str = "", **limits) -> SandboxResult:
    """Run untrusted `program` in one sandboxed interpreter and `tests` in another, where the
    program's top-level names are proxies: calls go to the program, results come back as
    plain data. PASSED iff the tests ran to their end and exited with status 0 while the
    program's process was still there (an exit, crash or kill of the program is not a pass).

    `stdin` goes to the program. `limits` are SandboxLimits fields (timeout_s, memory_mb, ...)
    and apply to each of the two processes; the wall clock is shared. The supported test
    shapes are in docs/sandbox.md.
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise ConfigError("program and tests must be str")
    if not isinstance(stdin, str):
        raise ConfigError(f"stdin must be a str, got {type(stdin).__name__}")
    return _run_pair(program, tests, limits_from(limits), stdin)
