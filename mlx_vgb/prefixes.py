"""The common prefix of sequences (token ids or text): for KV-cache reuse and erase/append."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix_len(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def common_prefix_len_many(rows: Sequence[Sequence]) -> int:
    """Length of the longest prefix shared by every row (at least one row)."""
    n = min(len(r) for r in rows)
    first = rows[0]
    for r in rows[1:]:
        n = common_prefix_len(first[:n], r)
    return n
