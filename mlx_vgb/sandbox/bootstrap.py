"""Child side, first stage: runs inside the sandboxed interpreter before any untrusted code.

The host (`host.py`) compiles this file, `codec.py` and `runner.py` once and sends the code
objects with each run's config; the interpreter (started with -I -S) executes them in one
namespace and calls `bootstrap_entry(cfg)`. That isolates the process (Linux namespaces and
mounts when permitted, else an audit hook), applies the resource limits, drops privileges and
hands over to `runner.run_role`. It imports only what it needs, lazily.
"""

import os
import sys

try:  # on the host an ordinary module; in the sandbox all child files share one namespace
    from .runner import run_role
except ImportError:
    pass

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
_PR_SET_DUMPABLE = 4

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

    def other_process(path) -> bool:
        """Whether `path` is under /proc/PID of another process (its memory, fds, cwd)."""
        if isinstance(path, int):
            return False
        try:
            text = fsdecode(path)
            if "proc" not in text:  # symlinks into /proc elsewhere point at /proc/self
                return False
            full = realpath(join(getcwd(), text))
        except Exception:
            return True
        parts = full.split("/")
        return (
            len(parts) > 2
            and parts[1] == "proc"
            and parts[2].isdigit()
            and (int(parts[2]) != os.getpid())
        )

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
            if other_process(path):
                raise PermissionError("sandbox: reading another process's /proc entries")
        elif event in paths:
            for path in args[:2] if event in ("os.rename", "os.link", "os.symlink") else args[:1]:
                if not inside(path):
                    raise PermissionError(f"sandbox: {event} outside the working folder")

    sys.addaudithook(hook)


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


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


def _close_channel(cfg: dict) -> None:
    """Processes that are not the program keep no end of the channel: EOF comes on exit."""
    for fd in cfg.get("channel") or ():
        try:
            os.close(fd)
        except OSError:
            pass


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
                _close_channel(cfg)
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
            if cfg["role"] == "tests":  # no /proc/PID/{mem,fd,environ} for same-uid processes
                libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        if "net" not in isolation or "fs" not in isolation:
            _install_guard(cfg["work"], "net" not in isolation, "fs" not in isolation)
        for fd in (status_fd, *(cfg.get("channel") or ())):
            os.set_inheritable(fd, False)
    except BaseException as e:
        os.write(2, f"mlx_vgb.sandbox: setup failed: {e!r}\n".encode())
        os._exit(_SETUP_FAILED)
    run_role(cfg, status_fd)


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
    _close_channel(cfg)
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


def bootstrap_entry(cfg: dict) -> None:
    """What the host's stub calls with the run's config."""
    try:
        _bootstrap(cfg)
    except SystemExit:
        raise
    except BaseException as e:
        os.write(2, f"mlx_vgb.sandbox: bootstrap failed: {e!r}\n".encode())
        os._exit(_SETUP_FAILED)
