"""Writes that are all or nothing: a file or a folder appears whole under its name, or not at
all (written to a temp path beside it, then renamed)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def publish_folder(tmp: Path, path: Path, force: bool) -> None:
    """Rename the finished folder ``tmp`` to ``path``; an existing ``path`` is replaced only when
    ``force`` (moved aside first, deleted after). Raises FileExistsError otherwise, and when
    another writer created ``path`` meanwhile."""
    old = None
    if path.exists():
        if not force:
            raise FileExistsError(f"{path} already exists; pass force=True to replace it.")
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError as e:  # a non-empty folder appeared at `path` meanwhile
        raise FileExistsError(f"{path} was created by another writer meanwhile") from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success publish it as ``path``. A failure leaves
    nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        publish_folder(tmp, path, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
