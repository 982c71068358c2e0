"""Sharding across processes and machines with MLX's own distributed layer (``mlx.launch``,
``mx.distributed``): rank r of n takes every n-th item, writes its own rows file, and rank 0
merges once every rank is done (a barrier: an all-reduce of one number).

Outside ``mlx.launch`` the world is one rank and nothing changes. On one machine:
``mlx.launch -n 2 --backend ring mlx-vgb bench code ...``; across machines, ``mlx.launch
--hostfile`` (MLX's docs). Rows files: ``NAME.jsonl`` for one rank, ``NAME.rank{r}.jsonl`` for
rank r of several; a resumed run reads all of them, whatever the number of ranks before.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, size) of this process; (0, 1) outside ``mlx.launch``."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        return 0, 1
    g = mx.distributed.init()
    return g.rank(), g.size()


def mine(items: Sequence[T], rank: int, size: int) -> list[T]:
    """Every ``size``-th item from ``rank``."""
    return list(items[rank::size])


def rows_path(folder: Path, name: str, rank: int, size: int) -> Path:
    return Path(folder) / (f"{name}.jsonl" if size == 1 else f"{name}.rank{rank}.jsonl")


def all_rows_paths(folder: Path, name: str) -> list[Path]:
    """Every rows file of ``name`` in ``folder`` (one rank's and each rank's of several)."""
    folder = Path(folder)
    one = folder / f"{name}.jsonl"
    return ([one] if one.exists() else []) + sorted(folder.glob(f"{name}.rank*.jsonl"))


def barrier(size: int) -> None:
    """Wait for every rank (no-op for one)."""
    if size > 1:
        import mlx.core as mx

        mx.eval(mx.distributed.all_sum(mx.array([1.0]), stream=mx.cpu))
