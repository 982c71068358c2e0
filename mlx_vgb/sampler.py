"""The one interface every sampler shares: ``stream`` (events) and ``sample`` (a result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Generator, Iterator, Sequence

from .actions import ActionSpace, Tokens
from .protocols import LanguageModel, Verifier
from .results import Done, Event, SampleResult
from .search import BudgetExhausted, Search
from .tree import Node


@dataclass
class Sampler:
    """Settings shared by all samplers.

    horizon: H, the most tokens a response may have (a leaf is EOS or H tokens).
    actions: what one step appends (``Tokens()``, ``Blocks(L)``, ``Lines(...)``).
    temp / top_k / top_p: transform pi_ref before sampling (changes the target to pi_ref' * tau).
    max_steps / max_forward_tokens: budgets; when one runs out the sampler returns its best
    effort with ``reached_leaf=False`` and ``finish_reason="budget"``. Without ``max_steps``
    a run stops after ``search.DEFAULT_MAX_STEPS`` steps: it never hangs.
    """

    horizon: int = 64
    actions: ActionSpace = field(default_factory=Tokens)
    temp: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_steps: int | None = None
    max_forward_tokens: int | None = None

    name: ClassVar[str] = "sampler"
    needs_verifier: ClassVar[bool] = True
    drift_value: ClassVar[float] = 1.0

    def _search(self, lm, verifier, prompt, seed) -> Search:
        return Search(
            lm, verifier, prompt, horizon=self.horizon, actions=self.actions, temp=self.temp,
            top_k=self.top_k, top_p=self.top_p, drift=getattr(self, "drift", 1.0),
            max_steps=self.max_steps, max_forward_tokens=self.max_forward_tokens, seed=seed)

    def _run(self, search: Search) -> Generator[Event, None, tuple[Node, str | None]]:
        """Yield events; return (final node, forced finish reason or None)."""
        raise NotImplementedError  # pragma: no cover

    def stream(
        self,
        lm: LanguageModel,
        verifier: Verifier | None = None,
        prompt: Sequence[int] = (),
        seed: int = 0,
        decode: Callable[[Sequence[int]], str] | None = None,
    ) -> Iterator[Event]:
        """Events (``Append``, ``Backtrack``) as the sampler moves, then ``Done(result)``."""
        if verifier is None and self.needs_verifier:
            from .errors import ConfigError

            raise ConfigError(f"sampler {self.name!r} needs a verifier")
        search = self._search(lm, verifier, prompt, seed)
        self.search = search  # the live run (its stats), for streaming UIs
        reason = None
        try:
            node, reason = yield from self._run(search)
        except BudgetExhausted:
            node, reason = search.current, "budget"
        if node.is_leaf and reason != "budget":
            reason = reason or ("stop" if node.eos else "length")
        else:
            reason = "budget"
        tilt = None
        if node.is_leaf and verifier is not None:
            try:
                tilt = search.tilt_of(node)
            except BudgetExhausted:  # pragma: no cover - tilt needs no budget
                pass
        decode = decode or getattr(lm, "decode", None)
        text = None
        if decode is not None:
            eos = search.tree.eos_token_ids
            text = decode([t for t in node.tokens if t not in eos])
        result = SampleResult(
            tokens=node.tokens, reached_leaf=node.is_leaf and reason != "budget",
            finish_reason=reason, tilt=tilt, stats=search.finish_stats(), sampler=self.name,
            seed=seed, text=text)
        yield Done(result)

    def sample(self, lm, verifier=None, prompt=(), seed: int = 0, decode=None) -> SampleResult:
        for ev in self.stream(lm, verifier, prompt, seed, decode):
            if isinstance(ev, Done):
                return ev.result
        raise AssertionError("stream ended without Done")  # pragma: no cover
