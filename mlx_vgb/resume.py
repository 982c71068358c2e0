"""Resuming a run: the settings stored with its rows must equal the new run's; results kept
with the key they were computed from are reused only under the same key."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .atomic import atomic_write


def settings_diff(then: dict, now: dict, keys: Iterable[str] | None = None) -> dict:
    """``{key: (then, now)}`` for the settings that differ (all keys of either when ``keys`` is
    None); empty when a run may resume."""
    keys = sorted(set(then) | set(now)) if keys is None else keys
    return {k: (then.get(k), now.get(k)) for k in keys if then.get(k) != now.get(k)}


def read_kept(path: Path | None, key: dict) -> dict | None:
    """What ``write_kept`` stored at ``path`` (its fields besides the key) when it was stored
    under ``key``; None when there is no such file, it does not parse, or its key differs."""
    if path is None or not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("key") != key:
        return None
    return {k: v for k, v in kept.items() if k != "key"}


def write_kept(path: Path, key: dict, fields: dict, indent: int | None = None) -> None:
    """Store ``fields`` at ``path`` with the ``key`` they were computed from (temp file, then
    rename), for ``read_kept``."""
    atomic_write(path, json.dumps({"key": key, **fields}, indent=indent) + "\n")
