"""Resuming a run: the settings stored with its rows must equal the new run's."""

from __future__ import annotations

from collections.abc import Iterable


def settings_diff(then: dict, now: dict, keys: Iterable[str] | None = None) -> dict:
    """``{key: (then, now)}`` for the settings that differ (all keys of either when ``keys`` is
    None); empty when a run may resume."""
    keys = sorted(set(then) | set(now)) if keys is None else keys
    return {k: (then.get(k), now.get(k)) for k in keys if then.get(k) != now.get(k)}
