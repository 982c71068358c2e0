"""What samplers return and stream: stats, results and walk events (append / backtrack / done)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SampleStats:
    """Accounting of one sampling run."""

    steps: int = 0  # walk steps (lazy self-loops included); forward samplers: actions taken
    backtracks: int = 0  # moves to a parent (VGB), discarded blocks/responses (baselines)
    restarts: int = 0  # returns to the root (theory VGB tries, ActionLevelRS dead ends, RS tries)
    # distinct prefixes whose pi_ref the sampler asked for (one token forward each from a cached
    # parent); the positions a model really computed are MLXLanguageModel.positions_computed
    forward_tokens: int = 0
    model_calls: int = 0  # batched language-model calls
    verifier_evals: int = 0  # prefixes valued (V^) + responses tilted (tau)
    verifier_calls: int = 0  # batched verifier calls
    proposals: int = 0  # candidate children drawn (K-candidates, rejection, blocks)
    pad_returns: int = 0  # practical VGB: steps onto a shallow leaf whose pad coin said "back"
    inexact_steps: int = 0  # Rejection steps that fell back to the biased rule (max_proposals)
    max_depth: int = 0  # deepest walk node reached (in actions)
    nodes: int = 0  # prefixes in the store at the end
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SampleResult:
    """One response. ``tokens`` are after the prompt and keep a final EOS token if there is one."""

    tokens: tuple[int, ...]
    reached_leaf: bool  # the response is complete (EOS or horizon)
    # "stop" (EOS), "length" (horizon); unfinished best effort: "budget" (steps, forward tokens
    # or tries ran out), "dead-end" (the root's moves all weighed zero in every draw);
    # "rejected" (OutcomeLevelRS: the last response of max_tries, complete but not accepted)
    finish_reason: str
    tilt: float | None  # tau(response) when complete
    stats: SampleStats
    sampler: str
    seed: int
    text: str | None = None


@dataclass(frozen=True)
class Append:
    """The walk moved down: these tokens were appended."""

    tokens: tuple[int, ...]
    depth: int  # walk depth after the move (actions)
    length: int  # tokens after the move
    step: int


@dataclass(frozen=True)
class Backtrack:
    """The walk moved up (or restarted): erase the last ``n_tokens`` tokens."""

    n_tokens: int
    depth: int
    length: int
    step: int


@dataclass(frozen=True)
class Done:
    result: SampleResult


Event = Append | Backtrack | Done


@dataclass
class Trace:
    """Replays events into the current token list; convenient for UIs and tests."""

    tokens: list[int] = field(default_factory=list)

    def apply(self, event: Event) -> None:
        if isinstance(event, Append):
            self.tokens.extend(event.tokens)
        elif isinstance(event, Backtrack):
            del self.tokens[len(self.tokens) - event.n_tokens :]
