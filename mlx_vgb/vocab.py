"""What the tokens of a vocabulary look like as text: one scan, used for line blocks and stops."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


def token_texts(tokenizer, vocab_size: int) -> Iterator[tuple[int, str]]:
    """(id, text) of every token id the tokenizer can decode on its own."""
    for i in range(vocab_size):
        try:
            yield i, tokenizer.decode([i])
        except Exception:  # noqa: BLE001 - ids without a text of their own (padding, gaps)
            continue


@dataclass(frozen=True)
class NewlineTokens:
    """Token ids whose text holds a newline (``line``), a blank line ``"\\n\\n"`` (``blank``),
    and the blank-line tokens that are whitespace only (``blank_only``)."""

    line: frozenset[int]
    blank: frozenset[int]
    blank_only: frozenset[int]


def newline_tokens(tokenizer, vocab_size: int) -> NewlineTokens:
    line, blank, blank_only = set(), set(), set()
    for i, s in token_texts(tokenizer, vocab_size):
        if "\n" in s:
            line.add(i)
            if "\n\n" in s:
                blank.add(i)
                if not s.strip():
                    blank_only.add(i)
    return NewlineTokens(frozenset(line), frozenset(blank), frozenset(blank_only))


def vocab_size_of(tokenizer) -> int:
    """The number of token ids (the tokenizer's table, added tokens included)."""
    size = getattr(tokenizer, "vocab_size", None)
    vocab = getattr(tokenizer, "vocab", None)
    return max(size or 0, len(vocab) if vocab is not None else 0)


def tokens_containing(tokenizer, text: str, vocab_size: int | None = None) -> set[int]:
    """Token ids whose own text holds ``text`` (e.g. the closing code fence: a stop)."""
    n = vocab_size if vocab_size is not None else vocab_size_of(tokenizer)
    return {i for i, s in token_texts(tokenizer, n) if text in s}
