"""Hostile and ordinary snippets through mlx_vgb.sandbox: contained, scored, host unharmed."""

import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from mlx_vgb.sandbox import (
    DEFAULT_MEMORY_MB,
    SandboxLimits,
    SandboxResult,
    Verdict,
    run_python,
    run_tests,
)
from mlx_vgb.sandbox.host import _run, _run_pair

LINUX = sys.platform.startswith("linux")
ROOT = os.name == "posix" and os.geteuid() == 0
# Kernel isolation (namespaces, fresh uid) as run_python uses it, and the audit-hook fallback
# used where namespaces are unavailable (macOS, locked-down containers): both must contain.
MODES = ["kernel", "guard"]
needs_rlimit_as = pytest.mark.skipif(sys.platform == "darwin", reason="macOS ignores RLIMIT_AS")


def run(code: str, mode: str = "kernel", **limits) -> SandboxResult:
    return _run(code, SandboxLimits(**limits), "", isolate=mode == "kernel")


def run_pair(program: str, tests: str, mode: str = "kernel", **limits) -> SandboxResult:
    return _run_pair(program, tests, SandboxLimits(**limits), "", isolate=mode == "kernel")


def not_passed(r: SandboxResult) -> bool:
    return r.verdict is not Verdict.PASSED and not r.passed


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            found.append(int(name))
    return found


# ---- ordinary programs ----------------------------------------------------------------------


def test_correct_program_passes():
    r = run_python("def add(a, b):\n    return a + b\nprint(add(2, 3))\n")
    assert r.verdict is Verdict.PASSED and r.returncode == 0
    assert r.stdout == "5\n" and r.stderr == "" and not r.truncated


def test_run_tests_passes_correct_program_and_fails_wrong_one():
    program = "def is_even(n):\n    return n % 2 == 0"
    assert run_tests(program, "assert is_even(4)\nassert not is_even(3)").verdict is Verdict.PASSED
    r = run_tests("def is_even(n):\n    return True", "assert not is_even(3), 'odd'")
    assert r.verdict is Verdict.FAILED and r.returncode == 1
    assert "AssertionError: odd" in r.stderr and 'File "tests.py", line 1' in r.stderr
    assert r.program is not None and r.program.verdict is Verdict.PASSED  # it served the call


def test_failing_assert_fails_with_traceback():
    r = run_python("x = 1\nassert x == 2, 'x is not two'\n")
    assert r.verdict is Verdict.FAILED and r.returncode == 1
    assert "AssertionError: x is not two" in r.stderr and "line 2" in r.stderr


def test_syntax_error_fails_without_raising_in_caller():
    r = run_python("def f(:\n    pass\n")
    assert r.verdict is Verdict.FAILED and "SyntaxError" in r.stderr
    r = run_python("x = 1\x00\n")  # a NUL byte: compile() itself refuses it
    assert r.verdict is Verdict.FAILED


def test_stdin_reaches_the_program():
    r = run_python(
        "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3\n4\n"
    )
    assert r.verdict is Verdict.PASSED and r.stdout == "10\n"
    r = run_python("print(input() or 'empty')")  # no stdin: EOF, not a hang
    assert r.verdict is Verdict.FAILED and "EOFError" in r.stderr


def test_exit_status_decides_run_python():
    assert run_python("import sys; sys.exit(0)").verdict is Verdict.PASSED
    r = run_python("import sys; sys.exit(3)")
    assert r.verdict is Verdict.FAILED and r.returncode == 3


@pytest.mark.parametrize(
    "escape", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"]
)
def test_run_tests_early_exit_is_not_passed(escape):
    r = run_tests(f"def f():\n    return 1\n{escape}\n", "assert f() == 2")
    assert r.verdict is Verdict.FAILED and r.program.returncode == 0
    assert "before the tests finished" in r.reason


def test_working_folder_is_private_writable_and_removed():
    code = (
        "import os, pathlib\n"
        "pathlib.Path('out.txt').write_text('hello')\n"
        "assert open('out.txt').read() == 'hello'\n"
        "assert os.environ['HOME'] == os.getcwd() and sorted(os.environ) == sorted(\n"
        "    ['HOME', 'LANG', 'LC_ALL', 'MKL_NUM_THREADS', 'OMP_NUM_THREADS',\n"
        "     'OPENBLAS_NUM_THREADS', 'PATH', 'TMPDIR'])\n"
        "print(os.getcwd())\n"
    )
    secret = "MLX_VGB_TEST_SECRET"
    os.environ[secret] = "hunter2"
    try:
        r = run_python(code)
    finally:
        del os.environ[secret]
    assert r.verdict is Verdict.PASSED, r.stderr
    assert not os.path.exists(r.stdout.strip())


def test_segfault_is_crashed():
    r = run_python("import ctypes\nctypes.string_at(0)\n")
    assert r.verdict is Verdict.CRASHED and r.returncode == -signal.SIGSEGV


def test_invalid_limits_raise_value_error():
    for bad in (
        {"timeout_s": -1},
        {"timeout_s": 0},
        {"timeout_s": float("nan")},
        {"memory_mb": 1},
        {"max_processes": 0},
        {"max_output_bytes": -5},
    ):
        with pytest.raises(ValueError):
            run_python("pass", **bad)
    with pytest.raises(ValueError, match="unknown sandbox limits"):
        run_tests("pass", "pass", timeout=3)
    with pytest.raises(ValueError):
        run_python(b"print(1)")
    assert SandboxLimits().memory_mb == DEFAULT_MEMORY_MB


@pytest.mark.skipif(not (LINUX and ROOT), reason="namespaces and a fresh uid need root here")
def test_linux_root_runs_fully_isolated():
    r = run_python(
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print(os.getpid(), os.getuid(), len(pids))"
    )
    assert set(r.isolation) == {"net", "pid", "home", "fs", "uid"}
    pid, uid, visible = map(int, r.stdout.split())
    assert pid == 2 and uid != 0  # PID 1 is the namespace's reaper; the uid is unprivileged
    assert visible == 2  # /proc shows the namespace, not the host


def test_concurrent_runs_do_not_interfere():
    results: list[SandboxResult] = []
    code = "import time\ntime.sleep(0.2)\nprint('ok')"
    threads = [threading.Thread(target=lambda: results.append(run_python(code))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.verdict for r in results] == [Verdict.PASSED] * 4
    assert all(r.stdout == "ok\n" for r in results)


def test_per_call_overhead_is_small():
    run_python("pass")  # compiles the bootstrap once
    walls = []
    for _ in range(10):
        start = time.perf_counter()
        assert run_python("pass").passed
        walls.append(time.perf_counter() - start)
    median = statistics.median(walls)
    print(f"sandbox per-call overhead: median {median * 1e3:.1f} ms, min {min(walls) * 1e3:.1f} ms")
    assert median < 0.5  # typically 40-80 ms on 2 cores; generous for loaded CI machines


# ---- hostile programs -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_times_out_within_the_wall_limit(mode):
    start = time.monotonic()
    r = run("while True:\n    pass\n", mode, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert r.verdict is Verdict.TIMED_OUT and not_passed(r)
    assert 1.0 <= r.wall_s and elapsed < 1.0 + 0.5


def test_sleeping_forever_with_signals_ignored_times_out():
    code = (
        "import signal, time\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "time.sleep(3600)\n"
    )
    start = time.monotonic()
    r = run_python(code, timeout_s=0.5)
    assert r.verdict is Verdict.TIMED_OUT and time.monotonic() - start < 1.0


@pytest.mark.skipif(os.name != "posix", reason="SIGSTOP")
def test_time_the_supervisor_was_stopped_does_not_count_against_the_wall_limit():
    # the host (a driver process in its own group) is stopped for 3 s while its program, which
    # needs 1 s of a 2 s limit, runs: the verdict is the program's, not a timeout
    driver = (
        "import sys\n"
        "from mlx_vgb.sandbox import run_python\n"
        "print('ready', flush=True)\n"
        "r = run_python('import time\\ntime.sleep(1.0)\\nprint(\"done\")', timeout_s=2.0)\n"
        "print(r.verdict.name, repr(r.stdout), flush=True)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert p.stdout.readline() == "ready\n"
        time.sleep(0.3)  # the program is starting or started: inside the 2 s window either way
        os.killpg(p.pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.killpg(p.pid, signal.SIGCONT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert out.split() == ["PASSED", repr("done\n")], out
    # a program that does not end still times out on the same clock
    start = time.monotonic()
    r = run_python("import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert r.verdict is Verdict.TIMED_OUT and time.monotonic() - start < 2.0


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize("how", ["fork", "subprocess"])
def test_spawning_processes_is_stopped_and_all_are_killed(how):
    marker = "mlx-vgb-spawn-" + secrets.token_hex(6)
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(60)', '{marker}']"
    spawn = {
        "fork": f"pid = os.fork()\n    if pid == 0:\n        os.execv(sys.executable, {sleeper})",
        "subprocess": f"subprocess.Popen({sleeper})",
    }[how]
    code = (
        "import os, subprocess, sys, time\n"
        "n = 0\n"
        "try:\n"
        "  for _ in range(200):  # a broken sandbox still cannot take the machine down\n"
        f"    {spawn}\n"
        "    n += 1\n"
        "finally:\n"
        "    print('spawned', n, flush=True)\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    r = run_python(code, timeout_s=3.0, max_processes=16)
    assert not_passed(r)
    assert time.monotonic() - start < 3.0 + 1.0
    spawned = int(r.stdout.split()[1]) if r.stdout.startswith("spawned") else 0
    assert spawned < 16, r.stdout + r.stderr
    deadline = time.monotonic() + 2.0
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


@needs_rlimit_as
@pytest.mark.parametrize("mode", MODES)
def test_allocating_10_gib_fails_fast(mode):
    start = time.monotonic()
    r = run("x = bytearray(10 * 2**30)\nprint(len(x))\n", mode, memory_mb=256)
    assert r.verdict is Verdict.MEMORY_EXCEEDED and r.verdict.base is Verdict.FAILED
    assert not_passed(r) and r.stdout == ""
    assert time.monotonic() - start < 2.0


@needs_rlimit_as
def test_growing_allocation_hits_the_memory_limit():
    code = "chunks = []\nfor _ in range(10 * 1024):\n    chunks.append(bytearray(2**20))\n"
    start = time.monotonic()
    r = run_python(code, memory_mb=256, timeout_s=10)
    assert r.verdict is Verdict.MEMORY_EXCEEDED and time.monotonic() - start < 3.0


def test_file_size_limit():
    r = run_python("open('big', 'wb').write(b'x' * (8 << 20))\n", max_file_mb=1)
    assert r.verdict is Verdict.FAILED and "File too large" in r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_writing_or_deleting_outside_the_working_folder_is_refused(mode):
    # World-writable folder and file: only the sandbox, not permissions, protects them.
    outside = tempfile.mkdtemp(prefix="mlx-vgb-test-outside-")
    os.chmod(outside, 0o777)
    sentinel = os.path.join(outside, "sentinel.txt")
    with open(sentinel, "w") as f:
        f.write("intact")
    os.chmod(sentinel, 0o666)
    stray = f"/tmp/mlx-vgb-test-stray-{secrets.token_hex(6)}"
    code = (
        f"import os, shutil\n"
        f"errors = []\n"
        f"for attempt in (lambda: os.remove({sentinel!r}),\n"
        f"                lambda: open({sentinel!r}, 'w').write('pwned'),\n"
        f"                lambda: open({stray!r}, 'w').write('pwned'),\n"
        f"                lambda: os.rename({sentinel!r}, {sentinel!r} + '.moved'),\n"
        f"                lambda: shutil.rmtree({outside!r}),\n"
        f"                lambda: (os.chdir('/tmp'), open({os.path.basename(stray)!r}, 'w'))):\n"
        f"    try:\n"
        f"        attempt()\n"
        f"    except Exception as e:\n"
        f"        errors.append(repr(e))\n"
        f"assert not errors, errors\n"
    )
    try:
        r = run(code, mode)
        assert not_passed(r) and r.verdict is Verdict.FAILED
        assert r.stderr.count("Error(") >= 6, r.stderr  # all six attempts refused
        with open(sentinel) as f:
            assert f.read() == "intact"
        assert sorted(os.listdir(outside)) == ["sentinel.txt"]
        assert not os.path.exists(stray)
    finally:
        for path in (sentinel, stray):
            if os.path.exists(path):
                os.remove(path)
        os.rmdir(outside)


@pytest.mark.parametrize("mode", MODES)
def test_network_is_unreachable(mode):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    code = (
        f"import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        f"s.sendall(b'exfiltrated')\n"
    )
    try:
        r = run(code, mode, timeout_s=3.0)
        assert not_passed(r) and r.verdict is Verdict.FAILED, r
        with pytest.raises(TimeoutError):
            server.accept()  # nobody connected
    finally:
        server.close()


@pytest.mark.skipif(not LINUX, reason="home folders are masked only on Linux")
def test_home_is_not_readable():
    home = os.path.expanduser("~")
    token = secrets.token_hex(16)
    secret = os.path.join(home, f".mlx-vgb-test-secret-{secrets.token_hex(4)}")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # world-readable
    with os.fdopen(fd, "w") as f:
        f.write(token)
    code = f"import glob, os\nprint(open({secret!r}).read())\n"
    scan = (
        "import glob, os\n"
        f"for p in glob.glob({home!r} + '/.*') + glob.glob('/home/*/.*'):\n"
        "    try:\n"
        "        print(open(p).read())\n"
        "    except Exception:\n"
        "        pass\n"
        "raise SystemExit(1)\n"
    )
    try:
        for snippet in (code, scan):
            r = run_python(snippet)
            assert not_passed(r)
            assert token not in r.stdout and token not in r.stderr
    finally:
        os.remove(secret)


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.stdout.write('x' * 100_000_000)\n",
        "while True:\n    print('y' * 1000)\n",
        "import sys\nsys.stderr.write('z' * 100_000_000)\n",
    ],
)
def test_printing_100_mb_is_capped_fast_and_flagged(code):
    start = time.monotonic()
    r = run_python(code, max_output_bytes=100_000, timeout_s=10)
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.truncated and not_passed(r)
    assert len(r.stdout) <= 100_000 and len(r.stderr) <= 100_000
    assert len(r.stdout) + len(r.stderr) >= 100_000
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("mode", MODES)
def test_killing_the_parent_or_its_group_leaves_the_host_alive(mode):
    host_pid, host_pgid = os.getpid(), os.getpgid(0)
    # Each snippet kills a target, then exits 0 only if the target is gone (an escape).
    attacks = [
        ("os.getppid()", "os.kill(target, signal.SIGKILL)", "os.kill(target, 0)"),
        (f"{host_pid}", "os.kill(target, signal.SIGKILL)", "os.kill(target, 0)"),
        (f"{host_pgid}", "os.killpg(target, signal.SIGKILL)", "os.killpg(target, 0)"),
        ("os.getpgid(0)", "os.killpg(target, signal.SIGKILL)", "os.killpg(target, 0)"),
    ]
    for target, attack, probe in attacks:
        code = (
            f"import os, signal, time\n"
            f"target = {target}\n"
            f"{attack}\n"
            f"time.sleep(0.2)\n"
            f"try:\n"
            f"    {probe}\n"
            f"except ProcessLookupError:\n"
            f"    raise SystemExit(0)\n"
            f"raise SystemExit('target survived')\n"
        )
        r = run(code, mode, timeout_s=3.0)
        assert not_passed(r), (attack, r)
        os.kill(host_pid, 0)
    assert run_python("print('still here')").stdout == "still here\n"


def test_program_is_not_pid_1_and_signals_behave_normally():
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('alive')")
    assert r.verdict is Verdict.CRASHED and r.returncode == -signal.SIGTERM
    assert r.stdout == "" and "SIGTERM" in r.reason


# ---- run_tests: the program cannot reach the tests or the verdict ---------------------------
# Each attack below is a wrong `add(a, b)` (it subtracts) plus a way to pass anyway. Before the
# program and the tests ran in separate interpreters, "settrace" and "frame-walk" passed.

WRONG_ADD = "def add(a, b):\n    return a - b\n"
HUMANEVAL_TESTS = (
    "def check(candidate):\n"
    "    assert candidate(2, 3) == 5\n"
    "    assert candidate(0, 7) == 7\n"
    "\n"
    "check(add)\n"
)
PLAIN_TESTS = "assert add(2, 3) == 5\nassert add(0, 7) == 7\n"
_TRACER = (
    "import dis, sys\n"
    "def _assert_lines(code):\n"
    "    lines, line = set(), None\n"
    "    for ins in dis.get_instructions(code):\n"
    "        line = ins.starts_line if ins.starts_line is not None else line\n"
    "        if ins.opname == 'LOAD_ASSERTION_ERROR':\n"
    "            lines.add(line)\n"
    "    return lines\n"
    "def _tracer(frame, event, arg):\n"
    "    if event in ('call', 'line') and frame.f_lineno in _assert_lines(frame.f_code):\n"
    "        try:\n"
    "            frame.f_lineno += 1  # jump over the assert\n"
    "        except ValueError:\n"
    "            pass\n"
    "    return _tracer\n"
)
_FORGE_STATUS = (  # write "done <every hex token found>" to every fd, as a leaked nonce would
    "def _forge(tokens):\n"
    "    import os\n"
    "    for fd in range(3, 256):\n"
    "        for t in tokens:\n"
    "            try:\n"
    "                os.write(fd, b'done ' + (t if isinstance(t, bytes) else t.encode()) + b'\\n')\n"
    "            except (OSError, UnicodeError):\n"
    "                pass\n"
    "def _hexlike(x):\n"
    "    return isinstance(x, (str, bytes)) and len(x) == 32 and all(\n"
    "        c in (b'0123456789abcdef' if isinstance(x, bytes) else '0123456789abcdef') for c in x)\n"
)
ATTACKS = {
    "settrace": _TRACER + "sys.settrace(_tracer)\nsys._getframe().f_trace = _tracer\n",
    "settrace-threads-profile": _TRACER
    + "import threading\nthreading.settrace(_tracer)\nsys.settrace(_tracer)\n"
    "sys.setprofile(lambda f, e, a: None)\n",
    "frame-walk": (  # the harness's locals: the nonce and the status pipe
        "import os, sys\n"
        "f = sys._getframe()\n"
        "while f is not None:\n"
        "    loc = f.f_locals\n"
        "    if 'nonce' in loc and 'status_fd' in loc:\n"
        "        os.write(loc['status_fd'], b'done ' + loc['nonce'] + b'\\n')\n"
        "        os._exit(0)\n"
        "    f = f.f_back\n"
    ),
    "frame-walk-inspect": _FORGE_STATUS + "import inspect\n"
    "_forge([v for fr in inspect.stack() for v in fr.frame.f_locals.values() if _hexlike(v)])\n",
    "gc-scan": _FORGE_STATUS
    + "import gc\n_forge([o for o in gc.get_objects() for o in ([o] if _hexlike(o) else\n"
    "    [v for v in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple))\n"
    "     else ()) if _hexlike(v)])])\n",
    "gc-scan-exit": _FORGE_STATUS
    + "import gc, os\n_forge([o for o in gc.get_objects() if _hexlike(o)])\nos._exit(0)\n",
    "rebind-builtins": (
        "import builtins, operator\n"
        "class _Never(Exception):\n    pass\n"
        "builtins.AssertionError = _Never\n"
        "builtins.abs = lambda x: 0\nbuiltins.all = lambda xs: True\n"
        "operator.eq = lambda a, b: True\n"
    ),
    "shadow-builtins": (  # top-level names the tests' helpers would pick up from the program
        "def abs(x):\n    return 0\n"
        "def all(xs):\n    return True\n"
        "isinstance = lambda *a: True\n"
        "import types\nmath = types.SimpleNamespace(isclose=lambda *a, **k: True)\n"
    ),
    "shadow-check": "def check(candidate):\n    pass\n",
    "eq-override": (
        "class _Yes:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return _Yes()\n"
    ),
    "eq-override-int-subclass": (
        "class _Int(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return _Int(a - b)\n"
    ),
    "eq-override-list-subclass": (
        "class _L(list):\n"
        "    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return _L([a - b])\n"
    ),
    "os-exit-in-call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys-exit-in-call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "kill-self-in-call": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), 9)\n",
    "stop-iteration": "def add(a, b):\n    raise StopIteration\n",
    "daemon-exit": (
        "import os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.01), os._exit(0)), daemon=True).start()\n"
        "def add(a, b):\n    time.sleep(0.05)\n    return a - b\n"
    ),
    "close-channel": (
        "import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n"
        "    except OSError:\n        pass\n"
    ),
    "fake-verdict-output": (
        "import os, sys\n"
        "for s in ('done ' + '0' * 32, 'isolation net', 'exit status 0', 'PASSED'):\n"
        "    print(s, flush=True)\n    print(s, file=sys.stderr, flush=True)\n"
        "for fd in range(1, 256):\n    try:\n        os.write(fd, b'done ' + b'0' * 32 + b'\\n')\n"
        "    except OSError:\n        pass\n"
    ),
    "kill-everything": (  # the tests' process, its reaper, the host: whatever it can see
        "import os, signal\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) != os.getpid():\n"
        "        try:\n            os.kill(int(p), signal.SIGKILL)\n"
        "        except OSError:\n            pass\n"
    ),
    "fork-and-leave": ("import os\nif os.fork():\n    os._exit(0)\n"),
}
# Appended after the attack's code: the attack defines add itself, or the wrong one is used.
TEST_SHAPES = {
    "humaneval": HUMANEVAL_TESTS,
    "plain": PLAIN_TESTS,
    "helpers": "assert abs(add(2, 3) - 5) < 1e-9\nassert all(add(i, i) == 2 * i for i in (1, 2))\n"
    "assert isinstance(add(1, 1), int) and math.isclose(add(0.5, 0.25), 0.75)\n",
    "map": "assert not any(map(lambda i: add(i, 1) != i + 1, range(3)))\n",
}


def attack_program(name: str) -> str:
    code = ATTACKS[name]
    return "import math\n" + (code if "def add(" in code else WRONG_ADD + code)


@pytest.mark.parametrize("shape", sorted(TEST_SHAPES))
def test_every_test_shape_passes_the_right_program(shape):
    r = run_tests("import math\ndef add(a, b):\n    return a + b\n", TEST_SHAPES[shape])
    assert r.passed, (r.stderr, r.program)


@pytest.mark.parametrize("shape", sorted(TEST_SHAPES))
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_wrong_program_cannot_pass_the_tests(name, shape):
    host_pid = os.getpid()
    r = run_tests(attack_program(name), TEST_SHAPES[shape])
    assert not_passed(r), (r.reason, r.stderr, r.program)
    os.kill(host_pid, 0)


@pytest.mark.parametrize(
    "name",
    [
        "settrace",
        "frame-walk",
        "gc-scan",
        "shadow-builtins",
        "eq-override",
        "os-exit-in-call",
        "kill-everything",
    ],
)
def test_wrong_program_cannot_pass_without_kernel_isolation(name):
    for tests in (HUMANEVAL_TESTS, TEST_SHAPES["helpers"]):
        r = run_pair(attack_program(name), tests, mode="guard")
        assert not_passed(r), (name, r.reason, r.stderr)


@pytest.mark.parametrize("name", ["settrace", "frame-walk", "gc-scan", "eq-override"])
def test_unit_tests_verifier_gives_tau_zero_to_attacks(name):
    from mlx_vgb.verifiers import UnitTests

    v = UnitTests(HUMANEVAL_TESTS)
    assert v.tilt_text(attack_program(name)) == 0.0
    assert v.tilt_text("def add(a, b):\n    return a + b\n") == 1.0


def test_attacks_pass_with_the_right_answer():
    """Control: each attack's machinery alone does not break an honest run, so the
    failures above are the harness refusing a wrong answer, not a crash."""
    right = "def add(a, b):\n    return a + b\n"
    for name in ("settrace", "frame-walk", "rebind-builtins", "shadow-builtins", "shadow-check"):
        r = run_tests(right + ATTACKS[name], HUMANEVAL_TESTS)
        assert r.passed, (name, r.reason, r.stderr, r.program)


@pytest.mark.parametrize("mode", MODES)
def test_program_cannot_read_the_tests(mode):
    token = secrets.token_hex(16)
    scan = (
        "import glob, os\n"
        "found = []\n"
        "paths = glob.glob('/tmp/mlx-vgb-sandbox-*/**', recursive=True)\n"
        "paths += glob.glob('/proc/[0-9]*/fd/*') + glob.glob('/proc/[0-9]*/cmdline')\n"
        "paths += glob.glob('/proc/[0-9]*/environ')\n"
        "for p in paths:\n"
        "    try:\n"
        "        with open(p, 'rb') as f:\n"
        "            found.append(f.read(1 << 20))\n"
        "    except Exception:\n"
        "        pass\n"
        "for p in glob.glob('/proc/[0-9]*/maps'):\n"
        "    pid = p.split('/')[2]\n"
        "    try:\n"
        "        mem = open(f'/proc/{pid}/mem', 'rb')\n"
        "        for line in open(p):\n"
        "            lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "            try:\n"
        "                mem.seek(lo)\n"
        "                found.append(mem.read(min(hi - lo, 1 << 22)))\n"
        "            except Exception:\n"
        "                pass\n"
        "    except Exception:\n"
        "        pass\n"
        f"TOKEN = bytes.fromhex({token.encode().hex()!r})\n"
        "hits = [chunk for chunk in found if TOKEN in chunk and b'fromhex' not in chunk]\n"
        "print('leaked' if hits else 'nothing', flush=True)\n"
        "def add(a, b):\n    return a - b\n"
    )
    tests = f"SECRET = {token!r}\nimport time\ntime.sleep(0.3)\nassert add(2, 3) == 5\n"
    r = run_pair(scan, tests, mode=mode, timeout_s=10)
    assert not_passed(r)
    assert r.program is not None and r.program.stdout == "nothing\n", r.program


# ---- run_tests: what honest tests can do ---------------------------------------------------


def test_humaneval_style_tests_see_plain_values():
    program = (
        "from typing import List, Tuple\n"
        "import math\n"
        "def poly(xs: list, x: float):\n"
        "    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n"
        "def stats(xs: List[int]) -> Tuple[int, float]:\n"
        "    return sum(xs), sum(xs) / len(xs)\n"
        "def shape(n):\n"
        "    return {'n': n, 'sq': {n * n}, 'b': bytes([n]), 'z': complex(n, -n), 'none': None,\n"
        "            'big': 2 ** 200, 'neg0': -0.0, 'inf': float('inf'), 'nested': [[n], (n,)]}\n"
        "def safe_div(a, b):\n"
        "    if b == 0:\n"
        "        raise ValueError('b is zero')\n"
        "    return a / b\n"
        "class MyError(Exception):\n    pass\n"
        "def mine():\n    raise MyError('custom')\n"
        "LIMIT = 10\n"
    )
    tests = (
        "import math, random\n"
        "def check(candidate):\n"
        "    assert candidate([1, 2, 3]) == (6, 2.0)\n"
        "    assert type(candidate([1])) is tuple\n"
        "    rng = random.Random(0)\n"
        "    for _ in range(20):\n"
        "        xs = [rng.randint(-9, 9) for _ in range(5)]\n"
        "        assert candidate(xs) == (sum(xs), sum(xs) / 5)\n"
        "check(stats)\n"
        "assert abs(poly([1, 2], 3.0) - 7.0) < 1e-9\n"
        "s = shape(3)\n"
        "assert s == {'n': 3, 'sq': {9}, 'b': b'\\x03', 'z': 3 - 3j, 'none': None,\n"
        "             'big': 2 ** 200, 'neg0': 0.0, 'inf': math.inf, 'nested': [[3], (3,)]}\n"
        "assert math.copysign(1, s['neg0']) == -1\n"
        "try:\n    safe_div(1, 0)\nexcept ValueError as e:\n    assert 'zero' in str(e)\n"
        "else:\n    raise AssertionError('no ValueError')\n"
        "try:\n    mine()\nexcept Exception as e:\n    assert 'MyError: custom' in str(e)\n"
        "assert LIMIT == 10 and math.isclose(safe_div(1, 4), 0.25)\n"
    )
    for mode in MODES:
        r = run_pair(program, tests, mode=mode)
        assert r.passed, (r.stderr, r.program.stderr)


def test_tests_can_use_the_programs_classes_and_generators():
    program = (
        "class Stack:\n"
        "    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n"
        "    def pop(self):\n        return self.items.pop()\n"
        "    def __len__(self):\n        return len(self.items)\n"
        "    def __str__(self):\n        return f'Stack{self.items}'\n"
        "def count(n):\n    yield from range(n)\n"
    )
    tests = (
        "s = Stack()\n"
        "s.push(1)\ns.push(2)\n"
        "assert len(s) == 2 and s.items == [1, 2] and str(s) == 'Stack[1, 2]'\n"
        "assert s.pop() == 2 and len(s) == 1\n"
        "s.label = 'x'\nassert s.label == 'x'\n"
        "assert list(count(3)) == [0, 1, 2]\n"
        "assert Stack() != Stack()  # objects compare by identity, not by the program's __eq__\n"
    )
    r = run_tests(program, tests)
    assert r.passed, (r.stderr, r.program.stderr)


def test_program_output_stdin_and_errors_are_reported():
    r = run_tests(
        "n = int(input())\nprint('loaded', n)\ndef f():\n    return n\n",
        "assert f() == 5\nprint('tests done')",
        stdin="5\n",
    )
    assert r.passed and r.stdout == "tests done\n" and r.program.stdout == "loaded 5\n"
    r = run_tests("def f(:\n    pass\n", "assert f() == 1")
    assert r.verdict is Verdict.FAILED and "before the tests finished" in r.reason
    assert "SyntaxError" in r.program.stderr
    r = run_tests("def f():\n    return 1 / 0\n", "f()")
    assert r.verdict is Verdict.FAILED and "ZeroDivisionError" in r.stderr
    assert 'File "main.py"' in r.program.stderr  # the program's own traceback
    r = run_tests("def f():\n    while True:\n        pass\n", "f()", timeout_s=1)
    assert r.verdict is Verdict.TIMED_OUT
    r = run_tests("def f():\n    return 'x' * (32 << 20)\n", "f()")
    assert r.verdict is Verdict.FAILED and "limit" in r.stderr


def test_exec_harness_over_the_programs_names():
    """The shape of mlx_vgb.tasks.testcases: tests exec lines against globals()."""
    harness = (
        "import json\n_ok = []\n"
        'for _l in json.loads(\'["assert is_even(4)", "assert is_even(3)"]\'):\n'
        "    try:\n        exec(compile(_l, '<test>', 'exec'), dict(globals()))\n"
        "        _ok.append(True)\n"
        "    except BaseException:\n        _ok.append(False)\n"
        "print('@@RESULT@@' + json.dumps(_ok))\n"
    )
    r = run_tests("def is_even(n):\n    return n % 2 == 0\n", harness)
    assert r.passed and r.stdout == "@@RESULT@@[true, false]\n"


def test_run_tests_overhead_is_small():
    run_tests("pass", "pass")
    walls = []
    for _ in range(10):
        start = time.perf_counter()
        assert run_tests("def f():\n    return 1\n", "assert f() == 1").passed
        walls.append(time.perf_counter() - start)
    median = statistics.median(walls)
    print(f"run_tests per-call overhead: median {median * 1e3:.1f} ms, min {min(walls) * 1e3:.1f}")
    assert median < 0.5  # two interpreters; typically 50-70 ms on a busy 2-core VM


# ---- the channel's codec -------------------------------------------------------------------


def test_codec_round_trips_plain_data_and_refuses_the_rest():
    from mlx_vgb.sandbox.codec import ChannelError, decode, encode

    values = [
        None,
        True,
        False,
        0,
        -1,
        2**300,
        -(2**70),
        1.5,
        -0.0,
        float("inf"),
        1e-300,
        3 - 4j,
        "",
        "é\n\x00\ud800",
        b"\x00\xff",
        bytearray(b"ab"),
        [1, [2, (3,)]],
        (),
        {1, 2},
        frozenset({"a"}),
        {"k": [1], (1, 2): None},
    ]
    for v in values:
        back = decode(encode(v, lambda _: None), lambda n: n)
        assert back == v and type(back) is type(v)
    nan = decode(encode(float("nan"), lambda _: None), lambda n: n)
    assert nan != nan
    with pytest.raises(ChannelError):
        encode(object(), lambda _: None)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ChannelError):
        encode(deep, lambda _: None)
    rng = __import__("random").Random(0)
    good = encode(values, lambda _: None)
    for _ in range(2000):  # corrupted messages: plain data or ChannelError, nothing else
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode(bytes(data[: rng.randint(0, len(data))]), lambda n: n)
        except ChannelError:
            pass


def test_tests_probing_errors_in_a_loop_do_not_fill_the_output():
    program = (
        "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x**0.5\n"
    )
    tests = (
        "for i in range(1, 3001):\n"
        "    try:\n        root(-i)\n    except ValueError:\n        pass\n"
        "    else:\n        raise AssertionError(i)\n"
        "assert root(4) == 2.0\n"
    )
    r = run_tests(program, tests, max_output_bytes=100_000)
    assert r.passed, (r.reason, r.program.stderr[-300:])
    assert r.program.stderr.count("ValueError: negative") == 3
