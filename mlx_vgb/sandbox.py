"""Run untrusted Python (model-written programs and tests) in a separate, limited process.

Each call starts a fresh interpreter in its own session with a private temporary working
folder, a minimal environment, resource limits (wall clock, CPU, address space, processes,
file size, no core dumps) and a capped read of its output. On Linux, when permitted (as root,
or where unprivileged user namespaces are allowed), the program also runs in new network,
mount and PID namespaces: no network, a read-only filesystem except its working folder (a
small tmpfs), home folders masked, and every process it started killed with it. As root it
runs as a fresh unprivileged uid. Elsewhere an in-process audit hook blocks sockets, ctypes,
exec and writes outside the working folder (best effort). See docs/sandbox.md.

The bootstrap section below runs inside the sandboxed interpreter: the host compiles it once
and sends the code object with each run's config, so the child imports nothing it does not
need (only `os` and `sys` are in its namespace; it imports the rest lazily).
"""

import enum
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, fields

# ---- bootstrap: begin ------------------------------------------------------------------------
# Linux constants (generic syscall numbers, same on x86-64 and arm64).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38

_MAIN_FILENAME = "main.py"
# Audit events refused when kernel isolation is missing (best effort: see docs/sandbox.md).
_NET_EVENTS = (
    "socket.__new__",
    "socket.connect",
    "socket.bind",
    "socket.getaddrinfo",
    "socket.sendto",
    "socket.sendmsg",
)
_ESCAPE_EVENTS = (
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.cdata",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "subprocess.Popen",
    "os.startfile",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
    "sys.addaudithook",
)
_PATH_EVENTS = (
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.utime",
    "shutil.rmtree",
    "os.chflags",
    "os.lchflags",
    "os.mkfifo",
    "os.mknod",
)
_PRELOAD = (
    "traceback",
    "linecache",
    "collections",
    "functools",
    "itertools",
    "math",
    "re",
    "string",
    "heapq",
    "bisect",
    "random",
    "typing",
    "json",
    "copy",
    "fractions",
    "decimal",
    "statistics",
    "operator",
    "hashlib",
    "dataclasses",
    "unittest",
    "shutil",
    "pathlib",
    "glob",
    "socket",
    "subprocess",
    "signal",
    "tempfile",
    "textwrap",
    "time",
    "datetime",
    "struct",
    "array",
    "contextlib",
    "io",
    "ctypes",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, src, target: str, fstype, flags: int, data=None) -> None:
    def enc(s):
        return None if s is None else os.fsencode(s)

    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _readonly_root(libc) -> None:
    """Make every mount of this (private) mount namespace read-only and nosuid."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    attr = MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = libc.syscall(
        _SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    if ret == 0:
        return
    # Kernels before 5.12: remount each mount point read-only, innermost last.
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        point = point.encode().decode("unicode_escape")
        libc.mount(
            None, os.fsencode(point), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID, None
        )
    st = os.statvfs("/")
    if not st.f_flag & os.ST_RDONLY:
        raise OSError("could not make the root filesystem read-only")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mask_homes(libc, cfg: dict) -> None:
    """Hide home folders behind empty tmpfs mounts, re-exposing what the interpreter needs."""
    masks = sorted({os.path.realpath(p) for p in cfg["mask"] if os.path.isdir(p)})
    masks = [m for m in masks if not any(_under(m, o) for o in masks if o != m)]
    for mask in masks:
        keep = sorted({p for p in cfg["expose"] if _under(p, mask) and p != mask})
        keep = [k for k in keep if not any(_under(k, o) for o in keep if o != k)]
        if any(_under(mask, p) for p in cfg["expose"]):
            continue  # the interpreter lives at or above this folder: leave it alone
        keep = [k for k in keep if os.path.isdir(k)]
        fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in keep]
        _mount(libc, "tmpfs", mask, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k")
        for fd, path in zip(fds, keep, strict=True):
            os.makedirs(path, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)


def _isolate_linux(cfg: dict) -> list:
    """In the bootstrap process: new namespaces and mounts. Returns what is in force."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID
    if os.geteuid() != 0:
        flags |= _CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        return []
    done = ["net", "pid"]
    if flags & _CLONE_NEWUSER:  # map our own uid/gid so files keep their owner
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    try:
        _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
        _mask_homes(libc, cfg)
        done.append("home")
        _readonly_root(libc)
        sandbox_uid = cfg["uid"] if cfg["uid"] is not None else uid
        _mount(
            libc,
            "tmpfs",
            cfg["work"],
            "tmpfs",
            _MS_NOSUID | _MS_NODEV,
            f"size={cfg['disk_mb']}m,nr_inodes=8192,mode=0700,uid={sandbox_uid},gid={sandbox_uid}",
        )
        os.chdir(cfg["work"])
        done.append("fs")
    except OSError as e:
        os.write(2, f"mlx_vgb.sandbox: filesystem isolation incomplete: {e}\n".encode())
    return done


def _set_limits(cfg: dict) -> None:
    import resource

    def cap(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value if which != resource.RLIMIT_CPU else value + 1))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_CPU, cfg["cpu_s"])
    cap(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    cap(resource.RLIMIT_NOFILE, 256)
    cap(resource.RLIMIT_NPROC, cfg["nproc"])
    if sys.platform != "darwin":  # macOS does not enforce RLIMIT_AS (and refuses some values)
        cap(resource.RLIMIT_AS, cfg["memory_mb"] << 20)


def _install_guard(work: str, block_net: bool, block_fs: bool) -> None:
    """Audit hook for platforms without kernel isolation. Permanent for this interpreter."""
    root = os.path.realpath(work)
    net, escape, paths = set(_NET_EVENTS), set(_ESCAPE_EVENTS), set(_PATH_EVENTS)
    realpath, join, fsdecode, getcwd = os.path.realpath, os.path.join, os.fsdecode, os.getcwd

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an fd the program already holds
        try:
            full = realpath(join(getcwd(), fsdecode(path)))
        except Exception:
            return False
        return full == root or full.startswith(root + "/") or full == "/dev/null"

    session = os.getsid(0)

    def own_session(pid: int) -> bool:
        try:
            return os.getsid(pid) == session
        except OSError:
            return False

    def hook(event: str, args: tuple) -> None:
        if event in escape:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event in ("os.kill", "os.killpg"):  # only processes of the sandbox's own session
            target = args[0] if event == "os.kill" else -args[0]
            if target == -1 or not own_session(abs(target) if target else os.getpid()):
                raise PermissionError("sandbox: signalling processes outside the sandbox")
        if block_net and event in net:
            raise PermissionError("sandbox: network access is not allowed")
        if not block_fs:
            return
        if event == "open":
            path, mode, flags = args
            writes = (flags or 0) & _WRITE_FLAGS or (mode and any(c in mode for c in "wax+"))
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working folder: {path!r}")
        elif event in paths:
            for path in args[:2] if event in ("os.rename", "os.link", "os.symlink") else args[:1]:
                if not inside(path):
                    raise PermissionError(f"sandbox: {event} outside the working folder")

    sys.addaudithook(hook)


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _finish(status: int) -> None:
    """Leave as the interpreter does after a script (threads, atexit, flush), minus the
    module teardown, which costs ~10 ms and changes nothing for the verdict."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120  # what CPython exits with when it cannot flush stdout
    os._exit(status & 0xFF)


def _run_program(cfg: dict, status_fd: int) -> None:
    """Compile and run the program in this process, then exit as `python main.py` would."""
    code, nonce, site_dirs = cfg["code"], cfg["nonce"].encode(), cfg["site_dirs"]
    del cfg
    sys.argv = [_MAIN_FILENAME]
    sys.path.insert(0, os.getcwd())
    sys.path.extend(site_dirs)
    import builtins

    builtins.exit = builtins.quit = sys.exit  # normally added by `site`

    namespace = {"__name__": "__main__", "__file__": _MAIN_FILENAME, "__builtins__": builtins}
    try:
        exec(compile(code, _MAIN_FILENAME, "exec"), namespace)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            _finish(e.code or 0)
        try:
            print(e.code, file=sys.stderr)
        except BaseException:
            pass
        _finish(1)
    except BaseException as e:  # print like the interpreter would, without bootstrap frames
        if isinstance(e, MemoryError):
            namespace.clear()  # free the program's data so that reporting has memory
        try:
            import linecache  # imported only here: it costs ~20 ms
            import traceback

            lines = code.splitlines(True)
            linecache.cache[_MAIN_FILENAME] = (len(code), None, lines, _MAIN_FILENAME)
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
            traceback.print_exception(type(e), e, tb)
        except BaseException:
            os.write(2, f"{type(e).__name__}: (traceback unavailable)\n".encode())
        _finish(1)
    try:
        sys.stdout.flush()
        os.write(status_fd, b"done " + nonce + b"\n")
    except BaseException:
        pass
    _finish(0)


def _init(pid: int, status_fd: int) -> None:
    """PID 1 of the namespace: reap orphans until the program exits, then exit like it.

    Its exit kills every other process of the namespace. It cannot die of a signal sent from
    inside, so a program killed by signal N is reported as "signal N" plus exit status 128+N.
    """
    while True:
        try:
            child, status = os.wait()
        except ChildProcessError:
            os._exit(_SETUP_FAILED)
        if child != pid:
            continue
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            os.write(status_fd, f"signal {sig}\n".encode())
            os._exit(128 + sig)
        os._exit(os.waitstatus_to_exitcode(status))


def _child(cfg: dict, status_fd: int, isolation: list) -> None:
    """Child of the bootstrap: finish isolation, apply limits, drop privileges, run."""
    try:
        if "pid" in isolation:  # we are PID 1 of the new namespace
            libc = _libc()
            try:  # a /proc that shows only this namespace's processes
                _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
            except OSError:
                pass
            libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
            pid = os.fork()
            if pid:
                _init(pid, status_fd)
        if "fs" not in isolation and cfg["preload"]:
            # The interpreter's files may not be readable by the sandbox uid (a Python under
            # /root, say): import what programs commonly use while still able to.
            for name in _PRELOAD:
                try:
                    __import__(name)
                except ImportError:
                    pass
        libc = _libc() if sys.platform.startswith("linux") else None
        _set_limits(cfg)
        if cfg["uid"] is not None:
            _drop_privileges(cfg["uid"])
        if libc is not None:
            libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # after setuid, which clears it
        if "net" not in isolation or "fs" not in isolation:
            _install_guard(cfg["work"], "net" not in isolation, "fs" not in isolation)
        os.set_inheritable(status_fd, False)
    except BaseException as e:
        os.write(2, f"mlx_vgb.sandbox: setup failed: {e!r}\n".encode())
        os._exit(_SETUP_FAILED)
    _run_program(cfg, status_fd)


_SETUP_FAILED = 125


def _bootstrap(cfg: dict) -> None:
    """Entry point of the sandboxed interpreter (runs as the caller's user, maybe root)."""
    import signal

    os.umask(0o022)
    status_fd = cfg["status_fd"]
    isolation = []
    if cfg["isolate"] and sys.platform.startswith("linux"):
        try:
            isolation = _isolate_linux(cfg)
        except OSError as e:
            os.write(2, f"mlx_vgb.sandbox: isolation failed: {e}\n".encode())
    if cfg["uid"] is not None:
        isolation.append("uid")
    # First line on the status pipe, written before any untrusted code runs.
    os.write(status_fd, ("isolation " + ",".join(isolation) + "\n").encode())
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    pid = os.fork()
    if pid == 0:
        _child(cfg, status_fd, isolation)  # does not return
    os.close(status_fd)
    del cfg
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(_SETUP_FAILED)
    if os.WIFSIGNALED(status):  # die of the same signal so the host sees it
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _bootstrap_entry(cfg: dict) -> None:
    try:
        _bootstrap(cfg)
    except SystemExit:
        raise
    except BaseException as e:
        os.write(2, f"mlx_vgb.sandbox: bootstrap failed: {e!r}\n".encode())
        os._exit(_SETUP_FAILED)


# ---- bootstrap: end --------------------------------------------------------------------------

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
# How long to keep reading after the program exited, for output still in the pipes.
_DRAIN_S = 0.2
_MIN_MEMORY_MB = 64
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Verdict(str, enum.Enum):
    PASSED = "passed"  # exit status 0 (run_tests: and the tests ran to their end)
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
            raise ValueError(f"timeout_s must be a positive finite number of seconds, got {t!r}")
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
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")

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

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASSED


_uid_lock = threading.Lock()
_uids_in_use: set = set()


def _allocate_uid() -> int | None:
    if os.name != "posix" or os.geteuid() != 0:
        return None
    with _uid_lock:
        while True:
            uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_COUNT)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uids_in_use.discard(uid)


def _processes_of(uid: int) -> list:
    """Live (non-zombie) processes whose real uid is `uid`, from /proc."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read(1024)
        except OSError:
            continue
        i = status.find(b"\nUid:\t")
        j = status.find(b"\nState:\t")
        if i < 0 or (j >= 0 and status[j + 8 : j + 9] in (b"Z", b"X")):
            continue
        if int(status[i + 6 :].split(b"\t", 1)[0]) == uid:
            pids.append(int(name))
    return pids


def _kill_all(pgid: int, uid: int | None, sweep: bool) -> None:
    """SIGKILL the process group and, if asked, every process of the sandbox uid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    if uid is None or not sweep or not sys.platform.startswith("linux"):
        return
    for _ in range(100):  # each round kills what the last round's survivors forked
        pids = _processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)


def _home_folders() -> list:
    homes = ["/root", "/home", "/Users", "/var/root", os.path.expanduser("~")]
    return [h for h in homes if h and h != "/"]


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


def _site_dirs() -> list:
    """The host's site-packages folders; the child starts with -S (site costs ~5 ms) and adds
    these itself, without running .pth files."""
    dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return [p for p in dict.fromkeys(dirs) if os.path.isdir(p)]


def _darwin_profile(work: str) -> str:
    work = os.path.realpath(work).replace('"', "")
    return (
        "(version 1)(allow default)(deny network*)(deny file-write*)"
        f'(allow file-write* (subpath "{work}") (literal "/dev/null"))'
    )


# The sandboxed interpreter runs this: load the compiled bootstrap and its config, run it.
_STUB = (
    "import marshal,os,sys\nwith open(sys.argv[1],'rb') as f:\n"
    " c=marshal.load(f);a=marshal.load(f)\n"
    "g={'__name__':'mlx_vgb.sandbox.bootstrap','os':os,'sys':sys}\n"
    "exec(c,g)\ng['_bootstrap_entry'](a)\n"
)
_bootstrap_code = None


def _compiled_bootstrap():
    """The bootstrap half of this file, compiled once per host process (saves ~10 ms a run)."""
    global _bootstrap_code
    if _bootstrap_code is None:
        with open(__file__, encoding="utf-8") as f:
            source = f.read()
        begin = source.index("# ---- bootstrap: begin")
        end = source.index("# ---- bootstrap: end")
        # Pad with newlines so tracebacks point at the right lines of this file.
        code = "\n" * source.count("\n", 0, begin) + source[begin:end]
        _bootstrap_code = compile(code, __file__, "exec")
    return _bootstrap_code


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


def _command(config_path: str, work: str) -> list:
    cmd = [sys.executable, "-I", "-S", "-B", "-c", _STUB, config_path]
    if sys.platform == "darwin" and shutil.which("sandbox-exec"):
        cmd = [shutil.which("sandbox-exec"), "-p", _darwin_profile(work)] + cmd
    return cmd


def _environment(work: str) -> dict:
    env = {
        "PATH": _SAFE_PATH,
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return env


def _crashed(reason: str, start: float) -> SandboxResult:
    return SandboxResult(Verdict.CRASHED, None, "", "", time.monotonic() - start, False, reason)


def _own_process_count(uid: int) -> int:
    """Processes `uid` runs now: RLIMIT_NPROC counts them all when we cannot switch uid."""
    if sys.platform.startswith("linux"):
        return len(_processes_of(uid))
    try:
        out = subprocess.run(
            ["ps", "-U", str(uid), "-o", "pid="], capture_output=True, timeout=5, check=True
        ).stdout
        return len(out.split())
    except (OSError, subprocess.SubprocessError):
        return 4096


def _run(
    code: str, limits: SandboxLimits, stdin: str, require_completion: bool, isolate: bool = True
) -> SandboxResult:
    """Run `code`; `isolate=False` skips kernel isolation (tests use it to check the guard)."""
    start = time.monotonic()
    uid = _allocate_uid()
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
            nproc += _own_process_count(os.getuid())
        status_r, status_w = os.pipe()
        nonce = secrets.token_hex(16)
        cfg = {
            "code": code,
            "work": work,
            "uid": uid,
            "status_fd": status_w,
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
        config_path = os.path.join(base, "config")
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            marshal.dump(_compiled_bootstrap(), f)
            marshal.dump(cfg, f)
        stdin_file = None
        if stdin:
            stdin_path = os.path.join(base, "stdin")
            with open(stdin_path, "wb") as f:
                f.write(stdin.encode("utf-8", "surrogateescape"))
            stdin_file = open(stdin_path, "rb")
        try:
            proc = subprocess.Popen(
                _command(config_path, work),
                stdin=stdin_file or subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=_environment(work),
                start_new_session=True,
                pass_fds=(status_w,),
                close_fds=True,
            )
        finally:
            os.close(status_w)
            if stdin_file is not None:
                stdin_file.close()
        try:
            return _supervise(proc, status_r, nonce, uid, limits, require_completion, start)
        finally:
            os.close(status_r)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return _crashed(f"sandbox could not run the program: {e!r}", start)
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        _release_uid(uid)


def _supervise(
    proc: subprocess.Popen,
    status_r: int,
    nonce: str,
    uid: int | None,
    limits: SandboxLimits,
    require_completion: bool,
    start: float,
) -> SandboxResult:
    """Read capped output until the run ends or a limit is hit; then kill everything."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), status_r: bytearray()}
    caps = {out_fd: limits.max_output_bytes, err_fd: limits.max_output_bytes, status_r: 4096}
    deadline = start + limits.timeout_s
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    reading = set(bufs)
    pidfd = None  # readable when the process exits (Linux); elsewhere poll every 10 ms
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except OSError:
            pidfd = None
    timed_out = overflow = False
    exited_at = None

    def in_pid_namespace() -> bool:
        return bufs[status_r].split(b"\n", 1)[0].find(b"pid") >= 0

    try:
        while reading and not overflow:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now  # kill stragglers (the PID namespace already took them)
                _kill_all(proc.pid, uid, sweep=not in_pid_namespace())
                if pidfd is not None:
                    sel.unregister(pidfd)
            end = deadline if exited_at is None else min(deadline, exited_at + _DRAIN_S)
            if now >= end:
                timed_out = exited_at is None
                break  # past the drain time, something unkillable still holds a pipe
            wait = end - now if pidfd is not None or exited_at is not None else min(end - now, 0.01)
            for key, _ in sel.select(wait):
                fd = key.fd
                if fd == pidfd:
                    continue  # seen by proc.poll() on the next round
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    reading.discard(fd)
                    continue
                room = max(caps[fd] - len(bufs[fd]), 0)
                bufs[fd] += chunk[:room]
                overflow |= len(chunk) > room and fd != status_r
    finally:
        _kill_all(proc.pid, uid, sweep=not in_pid_namespace())
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    wall = time.monotonic() - start
    stdout = bufs[out_fd].decode("utf-8", "replace")
    stderr = bufs[err_fd].decode("utf-8", "replace")
    status = bufs[status_r].decode("ascii", "replace").splitlines()
    isolation = tuple(x for x in status[0].partition(" ")[2].split(",") if x) if status else ()
    completed = f"done {nonce}" in status[1:]
    rc = proc.returncode
    if rc is not None and rc > 128 and f"signal {rc - 128}" in status[1:]:
        rc = 128 - rc  # killed by a signal inside the PID namespace (see _init)
    verdict, reason = _judge(rc, timed_out, overflow, completed, require_completion, stderr, limits)
    return SandboxResult(verdict, rc, stdout, stderr, wall, overflow, reason, isolation)


def _judge(
    rc: int | None,
    timed_out: bool,
    overflow: bool,
    completed: bool,
    require_completion: bool,
    stderr: str,
    limits: SandboxLimits,
) -> tuple:
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
    if rc == _SETUP_FAILED and "mlx_vgb.sandbox: " in stderr:
        return Verdict.CRASHED, "sandbox setup failed: " + stderr.strip().splitlines()[-1]
    if rc == 0:
        if require_completion and not completed:
            return Verdict.FAILED, "exited with status 0 before the tests finished"
        return Verdict.PASSED, "exit status 0"
    if memory:
        return Verdict.MEMORY_EXCEEDED, f"memory limit of {limits.memory_mb} MB reached"
    return Verdict.FAILED, f"exit status {rc}"


def _limits(kwargs: dict) -> SandboxLimits:
    names = {f.name for f in fields(SandboxLimits)}
    unknown = set(kwargs) - names
    if unknown:
        raise ValueError(f"unknown sandbox limits {sorted(unknown)}; valid: {sorted(names)}")
    return SandboxLimits(**kwargs)


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
        raise ValueError(f"code must be a str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise ValueError(f"stdin must be a str, got {type(stdin).__name__}")
    limits = SandboxLimits(
        timeout_s, memory_mb, max_output_bytes, max_processes, max_file_mb, disk_mb
    )
    return _run(code, limits, stdin, require_completion=False)


def run_tests(program: str, tests: str, *, stdin: str = "", **limits) -> SandboxResult:
    """Run `program` then `tests` as one script. PASSED iff the tests ran to their end and the
    process exited with status 0 (an early `sys.exit(0)` / `os._exit(0)` is FAILED).

    `limits` are SandboxLimits fields (timeout_s, memory_mb, ...).
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise ValueError("program and tests must be str")
    if not isinstance(stdin, str):
        raise ValueError(f"stdin must be a str, got {type(stdin).__name__}")
    code = program if program.endswith("\n") else program + "\n"
    return _run(code + "\n" + tests, _limits(limits), stdin, require_completion=True)
