"""The one interface every sampler shares: ``start`` (a ``Run``: state + events), ``stream``
(events) and ``sample`` (a result)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Generator, Iterator, Sequence

from .actions import ActionSpace, Tokens
from .errors import ConfigError
from .protocols import LanguageModel, Verifier
from .results import Append, Backtrack, Done, Event, SampleResult
from .run import Run, UnfinishedRun
from .tree import Node


@dataclass
class Sampler:
    """Settings shared by all samplers (a sampler object holds settings only: every run's state
    lives in its own ``Run``, so one sampler object may serve concurrent runs -- each with its
    own language model object when the model keeps per-run state, like ``MLXLanguageModel``'s
    KV cache).

    horizon: H, the most tokens a response may have (a leaf is EOS or H tokens).
    actions: what one step appends (``Tokens()``, ``Blocks(L)``, ``Lines(...)``).
    temp / top_k / top_p: transform pi_ref before sampling (changes the target to pi_ref' * tau).
    max_steps / max_forward_tokens: budgets. When a budget runs out, or every draw at the root
    weighs zero (a dead end that is not proved certain), the sampler returns its best effort --
    the deepest walk node it visited -- with ``reached_leaf=False`` and ``finish_reason``
    "budget" or "dead-end". Without ``max_steps`` a run stops after ``run.DEFAULT_MAX_STEPS``
    steps: it never hangs.
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

    def _new_run(self, lm, verifier, prompt, seed) -> Run:
        return Run(
            lm,
            verifier,
            prompt,
            horizon=self.horizon,
            actions=self.actions,
            temp=self.temp,
            top_k=self.top_k,
            top_p=self.top_p,
            drift=getattr(self, "drift", 1.0),
            max_steps=self.max_steps,
            max_forward_tokens=self.max_forward_tokens,
            seed=seed,
        )

    def _run(self, run: Run) -> Generator[Event, None, tuple[Node, str | None]]:
        """Yield events; return (final node, forced finish reason or None)."""
        raise NotImplementedError  # pragma: no cover

    def start(
        self,
        lm: LanguageModel,
        verifier: Verifier | None = None,
        prompt: Sequence[int] = (),
        seed: int = 0,
        decode: Callable[[Sequence[int]], str] | None = None,
        trace: Callable | None = None,
    ) -> Run:
        """A new run: iterate it for the events (``Append``, ``Backtrack``, then ``Done``); its
        ``stats``, ``tree`` and ``current`` are that run's live state."""
        if verifier is None and self.needs_verifier:
            raise ConfigError(f"sampler {self.name!r} needs a verifier")
        run = self._new_run(lm, verifier, prompt, seed)
        run.trace = trace
        run.events = self._events(run, verifier, seed, decode or getattr(lm, "decode", None))
        return run

    def _events(self, run: Run, verifier, seed, decode) -> Iterator[Event]:
        try:
            node, reason = yield from self._run(run)
        except UnfinishedRun as e:
            node, reason = run.current, e.reason
        if node.is_leaf and reason in (None, "rejected"):
            reason = reason or ("stop" if node.eos else "length")
        else:
            # unfinished: the best effort is the deepest node visited; the events go there
            reason = reason or "budget"
            node, cur = run.best, run.current
            if node is not cur:
                anc = node  # deepest walk ancestor of the best node that is a prefix of cur
                while len(anc) and cur.tokens[: len(anc)] != anc.tokens:
                    anc = anc.parent
                if len(cur) > len(anc):
                    yield Backtrack(len(cur) - len(anc), anc.depth, len(anc), run.stats.steps)
                if len(node) > len(anc):
                    yield Append(node.tokens[len(anc) :], node.depth, len(node), run.stats.steps)
                run.current = node
        yield Done(self._result(run, node, reason, verifier, seed, decode))

    def _result(self, run: Run, node: Node, reason: str, verifier, seed, decode) -> SampleResult:
        tilt = None
        if node.is_leaf and verifier is not None:
            tilt = run.tilt_of(node)
        text = None
        if decode is not None:
            eos = run.tree.eos_token_ids
            text = decode([t for t in node.tokens if t not in eos])
        done = node.is_leaf and reason in ("stop", "length", "rejected")
        return SampleResult(
            tokens=node.tokens,
            reached_leaf=done,
            finish_reason=reason,
            tilt=tilt,
            stats=run.finish_stats(),
            sampler=self.name,
            seed=seed,
            text=text,
        )

    def stream(
        self, lm, verifier=None, prompt=(), seed: int = 0, decode=None, trace=None
    ) -> Iterator[Event]:
        """The events of a new run (see ``start``)."""
        run = self.start(lm, verifier, prompt, seed, decode, trace)
        try:
            yield from run
        finally:
            run.release()

    def sample_budgets(
        self, lm, verifier=None, prompt=(), seed: int = 0, budgets: Sequence[int] = (), decode=None
    ) -> list[SampleResult]:
        """What ``sample`` with ``max_forward_tokens=b`` returns, for each ``b`` of ``budgets``,
        from one run at the largest: a run's draws are keyed by its seed and its tree, not by its
        budget, so a run with a smaller budget is this run up to where that budget stops it, and
        its result (the best effort, unfinished) is read off there; a budget the run never
        reaches gives the run's own result. (In a batched engine each run is the same up to the
        rounding of the batch it ran in, as for ``sample``.) Costs: the largest budget's run.
        An error raised after a smaller budget's point (a verifier's bad value) is raised here,
        although that budget's own run would have returned."""
        bs = sorted({int(b) for b in budgets})
        if not bs or bs[0] < 1:
            raise ConfigError(f"budgets must be integers >= 1, got {list(budgets)!r}")
        decode = decode or getattr(lm, "decode", None)  # as ``start`` does for its result
        smp = replace(self, max_forward_tokens=bs[-1])
        run = smp.start(lm, verifier, prompt, seed, decode)
        got: dict[int, SampleResult] = {}

        def mark(b: int) -> None:
            r = smp._result(run, run.best, "budget", verifier, seed, decode)
            got[b] = replace(r, stats=replace(r.stats))  # the run goes on: keep these numbers

        run.budget_marks, run.on_budget_mark = bs[:-1], mark
        final = None
        try:
            for ev in run:
                if isinstance(ev, Done):
                    final = ev.result
        finally:
            run.release()
        if final is None:  # pragma: no cover
            raise AssertionError("run ended without Done")
        return [got.get(int(b), final) for b in budgets]

    def sample(self, lm, verifier=None, prompt=(), seed: int = 0, decode=None) -> SampleResult:
        run = self.start(lm, verifier, prompt, seed, decode)
        try:
            for ev in run:
                if isinstance(ev, Done):
                    return ev.result
        finally:
            run.release()
        raise AssertionError("run ended without Done")  # pragma: no cover
