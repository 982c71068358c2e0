"""Errors and atomic output folders shared by the converters."""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ConversionError(ValueError):
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


@contextmanager
def atomic_output(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; on success rename it to ``path``.

    A failure leaves nothing behind. Two writers racing for the same ``path`` cannot mix
    their files: the second rename fails (unless ``force``) with OutputExistsError.
    """
    path = check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if force and path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError as e:  # a non-empty folder appeared at `path` meanwhile
            raise OutputExistsError(
                f"Output folder {path} was created by another writer; pass --force to replace it."
            ) from e
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
