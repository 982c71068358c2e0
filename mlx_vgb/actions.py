"""Actions: what one edge of the tree of prefixes appends.

``Tokens()``: one token (the paper's token-level walk). ``Blocks(L)``: L tokens.
``Lines(...)``: tokens up to and including a delimiter token (e.g. one line of code), at most
``max_len`` tokens. Every action also ends at a leaf: end-of-sequence or the horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from .errors import ConfigError


class ActionSpace:
    """Decides where a block of tokens ends."""

    single_token: bool = False

    def ends_block(self, block_len: int, token: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def max_depth(self, horizon: int) -> int:
        """D: depth (in actions) of the deepest possible leaf; VGB pads shorter responses to it
        (``mlx_vgb.vgb``). For ``Lines`` it is the horizon: a line may be a single token."""
        return horizon


@dataclass(frozen=True)
class Tokens(ActionSpace):
    single_token = True

    def ends_block(self, block_len: int, token: int) -> bool:
        return True


@dataclass(frozen=True)
class Blocks(ActionSpace):
    length: int

    def __post_init__(self):
        if not isinstance(self.length, int) or self.length < 1:
            raise ConfigError(f"block length must be an integer >= 1, got {self.length!r}")

    @property
    def single_token(self) -> bool:  # type: ignore[override]
        return self.length == 1

    def ends_block(self, block_len: int, token: int) -> bool:
        return block_len >= self.length

    def max_depth(self, horizon: int) -> int:
        return math.ceil(horizon / self.length)


@dataclass(frozen=True)
class Lines(ActionSpace):
    """Blocks that end at any of ``delimiters`` (token ids), or after ``max_len`` tokens."""

    delimiters: frozenset[int] = field(default_factory=frozenset)
    max_len: int = 64

    def __post_init__(self):
        object.__setattr__(self, "delimiters", frozenset(int(t) for t in self.delimiters))
        if not self.delimiters:
            raise ConfigError(
                "Lines() needs at least one delimiter token id (e.g. the ids of '\\n')"
            )
        if self.max_len < 1:
            raise ConfigError(f"Lines(max_len=...) must be >= 1, got {self.max_len}")

    def ends_block(self, block_len: int, token: int) -> bool:
        return token in self.delimiters or block_len >= self.max_len


def make_actions(block: int | str | None = None, delimiters: Iterable[int] = ()) -> ActionSpace:
    """``None``/1 -> tokens, an int L -> blocks of L, ``"line"`` -> blocks ending at a delimiter."""
    if block is None or block == 1 or block == "token":
        return Tokens()
    if block == "line":
        return Lines(frozenset(delimiters))
    if isinstance(block, str) and block.isdigit():
        block = int(block)
    if isinstance(block, int):
        return Blocks(block)
    raise ConfigError(f"block must be an integer >= 1, 'token' or 'line'; got {block!r}")
