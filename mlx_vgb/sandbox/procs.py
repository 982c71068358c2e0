"""Host side: sandbox uids and the processes they run (allocation, listing, killing)."""

import os
import secrets
import signal
import subprocess
import sys
import threading
import time

from .limits import SANDBOX_UID_BASE, SANDBOX_UID_COUNT

_uid_lock = threading.Lock()
_uids_in_use: set = set()


def allocate_uid() -> int | None:
    """A fresh uid for one sandboxed process (as root), else None."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    with _uid_lock:
        while True:
            uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_COUNT)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def release_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uids_in_use.discard(uid)


def processes_of(uid: int) -> list:
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


def kill_all(pgid: int, uid: int | None, sweep: bool) -> None:
    """SIGKILL the process group and, if asked, every process of the sandbox uid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    if uid is None or not sweep or not sys.platform.startswith("linux"):
        return
    for _ in range(100):  # each round kills what the last round's survivors forked
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)


def own_process_count(uid: int) -> int:
    """Processes `uid` runs now: RLIMIT_NPROC counts them all when we cannot switch uid."""
    if sys.platform.startswith("linux"):
        return len(processes_of(uid))
    try:
        out = subprocess.run(
            ["ps", "-U", str(uid), "-o", "pid="], capture_output=True, timeout=5, check=True
        ).stdout
        return len(out.split())
    except (OSError, subprocess.SubprocessError):
        return 4096
