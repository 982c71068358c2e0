"""Hostile and ordinary snippets through mlx_vgb.sandbox: contained, scored, host unharmed."""

import os
import secrets
import signal
import socket
import statistics
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
    _run,
    run_python,
    run_tests,
)

LINUX = sys.platform.startswith("linux")
ROOT = os.name == "posix" and os.geteuid() == 0
# Kernel isolation (namespaces, fresh uid) as run_python uses it, and the audit-hook fallback
# used where namespaces are unavailable (macOS, locked-down containers): both must contain.
MODES = ["kernel", "guard"]
needs_rlimit_as = pytest.mark.skipif(sys.platform == "darwin", reason="macOS ignores RLIMIT_AS")


def run(code: str, mode: str = "kernel", **limits) -> SandboxResult:
    return _run(
        code, SandboxLimits(**limits), "", require_completion=False, isolate=mode == "kernel"
    )


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
    assert "AssertionError: odd" in r.stderr and 'File "main.py"' in r.stderr


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
    assert r.verdict is Verdict.FAILED and r.returncode == 0
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
