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
