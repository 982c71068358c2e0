"""Errors and atomic output folders shared by the converters."""

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import publish_folder
from ..errors import VGBError


class ConversionError(VGBError, ValueError):
    """An input the converter cannot turn into an MLX folder; the message says what to do."""


class OutputExistsError(ConversionError):
    """The output folder already exists and replacing it was not asked for."""


def check_output(path: str | Path, force: bool) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(
            f"Output folder {path} already exists; pass --force (force=True) to replace it."
        )
    return path


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Refuse to start writing ``need`` bytes where the disk has less free."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ConversionError(
            f"Not enough disk space for {what}: it needs {need / 2**20:.0f} MiB, {folder} has "
            f"{free / 2**20:.0f} MiB free. Free some space, or write elsewhere (--mlx-path, or "
            "MLX_VGB_HOME for the model cache)."
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def temp_prefix(path: str | Path) -> str:
    """Name prefix of the temp files and folders this process writes ``path`` through."""
    return f".{Path(path).name}.tmp-{os.getpid()}-"


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temp files and folders of ``path`` left by writers that were killed (their
    pid, in the name, is gone); the removed paths."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*-*"):
        pid = tmp.name[len(f".{path.name}.tmp-") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_output(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; on success rename it to ``path``.

    A failure leaves nothing behind; what a killed writer left (SIGKILL, power loss) is removed
    by the next writer of ``path``. Two writers racing for the same ``path`` cannot mix their
    files: the second rename fails (unless ``force``) with OutputExistsError.
    """
    path = check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ConversionError(
                    f"The disk filled up while writing {path} ({e.strerror}); nothing was kept. "
                    "Free some space, or write elsewhere (--mlx-path, or MLX_VGB_HOME for the "
                    "model cache), and run the conversion again."
                ) from e
            raise
        try:
            publish_folder(tmp, path, force)
        except FileExistsError as e:  # a folder appeared at `path` meanwhile
            raise OutputExistsError(
                f"Output folder {path} was created by another writer; pass --force to replace it."
            ) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
