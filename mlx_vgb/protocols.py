"""The two small protocols the samplers are written against.

A *language model* gives next-token log-probabilities pi_ref(. | prompt, prefix) for a batch of
prefixes (token ids after the prompt). A *verifier* gives the process value V^(prefix) >= 0 of
unfinished prefixes and the outcome tilt tau(response) >= 0 of complete ones (genlm-control's
``prefix`` / ``complete`` potentials). Anything with these methods plugs in: the tabular toys of
``mlx_vgb.toy``, MLX models, or a user's own Python callables (``FunctionVerifier``).

Call order, which implementations may exploit (e.g. to keep and trim a KV cache):
``begin(prompt)`` once per sampling run, then ``logprobs`` / ``value`` calls that follow the walk:
the batch of a call usually shares one prefix (the current node) and extends the rows of the
previous call by one token; a backtrack shows up as a request for a shorter prefix. Nothing is
ever requested twice for the same prefix within a run (the sampler memoizes), so an
implementation needs no cache of its own results.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

Prefix = Sequence[int]


@runtime_checkable
class LanguageModel(Protocol):
    """pi_ref: next-token log-probabilities over a vocabulary of ``vocab_size`` tokens."""

    vocab_size: int
    eos_token_ids: frozenset[int]

    def begin(self, prompt: Sequence[int]) -> None:
        """Start a run on ``prompt`` (token ids). Drop per-run state (KV caches) of earlier runs."""

    def logprobs(self, prefixes: Sequence[Prefix]) -> np.ndarray:
        """Log pi_ref(. | prompt + prefix) for each prefix: float array of shape (B, vocab_size)."""


@runtime_checkable
class Verifier(Protocol):
    """V^ on unfinished prefixes, tau on complete responses. Both must be finite and >= 0."""

    def begin(self, prompt: Sequence[int]) -> None:
        """Start a run on ``prompt``."""

    def value(self, prefixes: Sequence[Prefix]) -> np.ndarray:
        """V^(prompt, prefix) >= 0 for each unfinished prefix: shape (B,)."""

    def tilt(self, responses: Sequence[Prefix]) -> np.ndarray:
        """tau(prompt, response) >= 0 for each complete response (may end with EOS): shape (B,)."""


class BaseLanguageModel:
    """Convenience base: no-op ``begin``; optional ``decode`` for text; ``requires_prompt``."""

    vocab_size: int
    eos_token_ids: frozenset[int] = frozenset()
    requires_prompt: bool = True

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def end(self) -> None:
        """The run is over: drop its per-run state (the next ``begin`` starts afresh)."""

    def logprobs(self, prefixes: Sequence[Prefix]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class BaseVerifier:
    """Convenience base: no-op ``begin``; ``bound`` is an upper bound of V^ and tau (used by the
    exact rejection step); ``tilt`` defaults to ``value``."""

    bound: float = 1.0

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def value(self, prefixes: Sequence[Prefix]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def tilt(self, responses: Sequence[Prefix]) -> np.ndarray:
        return self.value(responses)


class FunctionVerifier(BaseVerifier):
    """A verifier from two plain Python callables on one prefix (token tuple) at a time.

    ``value_fn(prefix) -> float`` gives V^, ``tilt_fn(response) -> float`` gives tau (defaults to
    ``value_fn``). Use ``mlx_vgb.verifiers`` for text-level callables.
    """

    def __init__(
        self,
        value_fn: Callable[[tuple[int, ...]], float],
        tilt_fn: Callable[[tuple[int, ...]], float] | None = None,
        bound: float = 1.0,
    ):
        self.value_fn = value_fn
        self.tilt_fn = tilt_fn or value_fn
        self.bound = bound

    def value(self, prefixes: Sequence[Prefix]) -> np.ndarray:
        return np.array([self.value_fn(tuple(p)) for p in prefixes], dtype=np.float64)

    def tilt(self, responses: Sequence[Prefix]) -> np.ndarray:
        return np.array([self.tilt_fn(tuple(r)) for r in responses], dtype=np.float64)
