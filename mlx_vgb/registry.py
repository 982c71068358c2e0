"""One table of samplers and verifiers, used by the CLI, the web app and the benches.

- ``SAMPLERS``: the sampler names (``--sampler``), each with its factory and a line of help;
  ``make_sampler`` builds one from the common knobs.
- ``parse_block``: ``--block`` values ('token', 'line' or a number of tokens).
- Verifier specs are typed (``NoLetterSpec``, ``RegexSpec``, ... ``FunctionSpec``):
  ``parse_verifier`` reads the ``--verifier`` grammar (``VERIFIER_HELP``), ``spec.to_string()``
  writes it back, and ``make_language_model`` / ``make_verifier`` build the pair a run needs
  (a value head is attached through the language model's constructor, which checks that the
  model exposes its hidden states).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .actions import Lines, make_actions
from .baselines import BestOfN, BlockBestOfN, BlockRS, OutcomeLevelRS, Plain
from .errors import ConfigError
from .lm import MLXLanguageModel
from .protocols import BaseVerifier, Verifier
from .sampler import Sampler
from .vgb import VGB, ActionLevelRS

DEFAULT_SAMPLER = "vgb"
DEFAULT_VERIFIER = "none"
DEFAULT_CANDIDATES = 8
DEFAULT_CHOICE = None  # None: the child-choice rule's own default (mlx_vgb.children)
DEFAULT_DRIFT = 1.0  # the paper's walk
# line actions: a response of few lines is padded to D = the token horizon, and at lambda = 1
# the walk reaches a padded leaf from the end of a short response with probability 1 / (pad
# steps + 1); lambda = 0.5 makes that >= 1/2 (the leaf law is unchanged: every leaf is at D)
DEFAULT_LINE_DRIFT = 0.5

# -- samplers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerEntry:
    """A ``--sampler`` name: ``make(common, candidates, choice, drift)`` builds it."""

    name: str
    help: str
    make: Callable[..., Sampler]


def _walk(cls, **extra):
    def make(common, candidates, choice, drift):
        kw = dict(extra)
        if cls is VGB:
            kw["drift"] = drift
        return cls(choice=make_choice(choice, candidates), **kw, **common)

    return make


def _pool(cls, arg):
    return lambda common, candidates, choice, drift: cls(**{arg: candidates}, **common)


SAMPLERS: dict[str, SamplerEntry] = {
    e.name: e
    for e in (
        SamplerEntry(
            "vgb", "the practical VGB walk (no laziness, stops at the first leaf)", _walk(VGB)
        ),
        SamplerEntry(
            "vgb-lazy",
            "the theory variant: lazy walk of T steps, output if on a leaf, else restart",
            _walk(VGB, lazy=True),
        ),
        SamplerEntry(
            "action-rs",
            "ActionLevelRS / locally constrained decoding: VGB without the parent move",
            _walk(ActionLevelRS),
        ),
        SamplerEntry(
            "outcome-rs",
            "rejection sampling of whole responses",
            _pool(OutcomeLevelRS, "max_tries"),
        ),
        SamplerEntry("bon", "Best-of-N by tau", _pool(BestOfN, "n")),
        SamplerEntry(
            "block-bon", "Block Best-of-N over blocks of --block tokens", _pool(BlockBestOfN, "n")
        ),
        SamplerEntry(
            "block-rs",
            "Block rejection sampling over blocks of --block tokens",
            _pool(BlockRS, "n"),
        ),
        SamplerEntry(
            "plain",
            "sampling from pi_ref",
            lambda common, candidates, choice, drift: Plain(**common),
        ),
    )
}


def make_choice(choice, candidates: int = DEFAULT_CANDIDATES):
    """A child-choice rule from its name (``--choice``) and K, or a ready rule object."""
    from . import children

    if choice is not None and not isinstance(choice, str):
        return choice
    if choice is None:
        return children.make_choice(k=candidates)
    return children.make_choice(choice, candidates)


def make_sampler(
    name: str = DEFAULT_SAMPLER,
    *,
    max_tokens: int,
    block=None,
    candidates: int = DEFAULT_CANDIDATES,
    choice=DEFAULT_CHOICE,
    temp: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_steps: int | None = None,
    max_forward_tokens: int | None = None,
    drift: float | None = None,
    line_tokens: frozenset[int] = frozenset(),
    actions=None,
) -> Sampler:
    """A sampler by name. ``candidates`` is K for the walks, n for the pools (BoN, RS);
    ``actions`` (an ``ActionSpace``) replaces the one ``block`` and ``line_tokens`` give;
    ``drift`` None: ``default_drift(block)``."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if not isinstance(candidates, int) or candidates < 1:
        raise ConfigError(
            f"candidates (K, or n for the pools) must be an integer >= 1, got {candidates!r}"
        )
    if actions is None:
        block = parse_block(block)
        actions = Lines(line_tokens) if block == "line" else make_actions(block)
    if drift is None:
        drift = default_drift(actions)
    common = dict(
        horizon=max_tokens,
        actions=actions,
        temp=temp,
        top_p=top_p,
        top_k=top_k,
        max_steps=max_steps,
        max_forward_tokens=max_forward_tokens,
    )
    return SAMPLERS[name].make(common, candidates, choice, drift)


def default_drift(block) -> float:
    """lambda when none is given: ``DEFAULT_LINE_DRIFT`` for line actions, else 1."""
    return DEFAULT_LINE_DRIFT if block == "line" or isinstance(block, Lines) else DEFAULT_DRIFT


def parse_block(value) -> int | str | None:
    """``--block``: None or 'token' -> None (one token per action), 'line', or an int L >= 1."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("", "token"):
            return None
        if v == "line":
            return "line"
        try:
            value = int(v)
        except ValueError:
            raise ConfigError(
                f"block must be 'token', 'line' or a number of tokens, got {value!r}"
            ) from None
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"block must be 'token', 'line' or a number of tokens >= 1, got {value!r}"
        )
    return None if value == 1 else value


# -- verifiers ---------------------------------------------------------------------------------

VERIFIER_HELP = """verifier spec:
  none                       V^ = tau = 1 (plain pi_ref; for baselines)
  no-letter:e[,alpha=0.3]    the paper's letter avoidance, V^ = alpha^(H-h) * [no 'e' so far]
  regex:PATTERN              the response must fully match PATTERN
  forbid:word1|word2         none of these strings may appear (spaces count)
  python-syntax              every finished line parses as the start of a Python program
  unit-tests:FILE            python-syntax inside; at the end FILE's asserts run in the sandbox
  head:PATH                  a value-head verifier folder on the generator's hidden states
  code-head                  the shipped head of qwen2.5-coder-0.5b for Python functions
                             (HumanEval-style; answers end at the closing fence)
  model:PATH                 a verifier folder with its own backbone (bridged through text)
  package.module:function    fn(text, complete) -> float, your own"""


class VerifierSpec:
    """A typed ``--verifier`` setting. ``build(lm, ...)`` makes the verifier."""

    kind: str = ""

    def to_string(self) -> str:  # pragma: no cover - every spec overrides it
        raise NotImplementedError

    def build(self, lm: MLXLanguageModel, *, max_tokens: int, prompt_text: str | None):
        raise NotImplementedError  # pragma: no cover


class _Always(BaseVerifier):
    """V^ = tau = 1."""

    def value(self, prefixes):
        import numpy as np

        return np.ones(len(prefixes))


@dataclass(frozen=True)
class NoVerifierSpec(VerifierSpec):
    kind = "none"

    def to_string(self):
        return "none"

    def build(self, lm, *, max_tokens, prompt_text):
        return _Always()


@dataclass(frozen=True)
class NoLetterSpec(VerifierSpec):
    letter: str = "e"
    alpha: float = 0.3
    kind = "no-letter"
    # its values alpha^(H - h) sit far below the bound 1: the exact rejection step would almost
    # never accept, so the walks default to the fast K-candidate rule for it
    default_choice = "self-normalized"

    def to_string(self):
        return f"no-letter:{self.letter},alpha={self.alpha:g}"

    def build(self, lm, *, max_tokens, prompt_text):
        from .verifiers import LetterAvoidance

        return LetterAvoidance(self.letter, self.alpha, max_tokens)


@dataclass(frozen=True)
class RegexSpec(VerifierSpec):
    pattern: str
    kind = "regex"

    def to_string(self):
        return f"regex:{self.pattern}"

    def build(self, lm, *, max_tokens, prompt_text):
        from .verifiers import RegexMatch

        return RegexMatch(self.pattern)


@dataclass(frozen=True)
class ForbidSpec(VerifierSpec):
    words: tuple[str, ...]
    kind = "forbid"

    def __post_init__(self):
        if not any(self.words):
            raise ConfigError("forbid: give at least one string, e.g. forbid:foo|bar")

    def to_string(self):
        return "forbid:" + "|".join(self.words)

    def build(self, lm, *, max_tokens, prompt_text):
        from .verifiers import ForbiddenStrings

        return ForbiddenStrings(self.words)


@dataclass(frozen=True)
class PythonSyntaxSpec(VerifierSpec):
    kind = "python-syntax"

    def to_string(self):
        return "python-syntax"

    def build(self, lm, *, max_tokens, prompt_text):
        from .verifiers import PythonSyntax

        return PythonSyntax()


@dataclass(frozen=True)
class UnitTestsSpec(VerifierSpec):
    """``tests``: the test code itself; ``source``: where it came from (a file path, or a label
    such as 'the tests box'), named in error messages."""

    tests: str
    source: str = "tests.py"
    kind = "unit-tests"

    def to_string(self):
        return f"unit-tests:{self.source}"

    def build(self, lm, *, max_tokens, prompt_text):
        from .verifiers import UnitTests

        return UnitTests(self.tests, source_name=self.source)


@dataclass(frozen=True)
class HeadSpec(VerifierSpec):
    """A value-head folder read on the generator's own hidden states."""

    path: str
    kind = "head"

    def to_string(self):
        return f"head:{self.path}"

    def load_head(self, model):
        from .verifier_format import load_verifier

        cfg, head, backbone = load_verifier(_existing(self.kind, self.path))
        if backbone is not None:
            raise ConfigError(f"{self.path} has its own backbone: use model:{self.path}")
        hidden = getattr(getattr(model, "args", None), "hidden_size", None)
        if hidden is not None and cfg.head.dims[0] != hidden:
            raise ConfigError(
                f"{self.path}: the head reads hidden size {cfg.head.dims[0]} but "
                f"the generator's is {hidden}: it was trained for another model"
            )
        return head

    def build(self, lm, *, max_tokens, prompt_text):
        from .model_verifier import ValueHeadVerifier

        if lm.value_head is None:
            raise ConfigError(
                f"head:{self.path}: the language model was built without the "
                "head; build both with mlx_vgb.registry.make_run_pair"
            )
        return ValueHeadVerifier(lm)


CODE_HEAD = Path(__file__).resolve().parent / "assets" / "heads" / "code-head"


@dataclass(frozen=True)
class CodeHeadSpec(HeadSpec):
    """``code-head``: the value head shipped for Qwen2.5-Coder-0.5B-Instruct, trained by
    ``results/code/pipeline.sh`` on the model's own HumanEval rollouts (train split; card in
    its folder). Its prompt is ``mlx_vgb.tasks.code``'s: the chat template asking for the whole
    function, the answer prefilled with a python fence and the function's signature and
    docstring (``--prefill-response``); the answer ends at the closing fence, so the fence's
    tokens end a response here too. V^ is floored at 1e-3 (as in ``bench code``)."""

    path: str = str(CODE_HEAD)
    kind = "code-head"
    stop_text = "```"
    floor = 1e-3

    def to_string(self):
        return "code-head"

    def load_head(self, model):
        if not (Path(self.path) / "verifier_config.json").is_file():
            raise ConfigError(
                f"code-head: this install has no shipped head at {self.path}; train one with "
                "results/code/pipeline.sh and pass it as head:results/code/head"
            )
        return super().load_head(model)

    def build(self, lm, *, max_tokens, prompt_text):
        from .model_verifier import ValueHeadVerifier

        super().build(lm, max_tokens=max_tokens, prompt_text=prompt_text)  # checks the head
        return ValueHeadVerifier(lm, floor=self.floor)


@dataclass(frozen=True)
class ModelSpec(VerifierSpec):
    """A verifier folder with its own backbone, bridged through text."""

    path: str
    kind = "model"

    def to_string(self):
        return f"model:{self.path}"

    def build(self, lm, *, max_tokens, prompt_text):
        from .model_verifier import SeparateModelVerifier

        return SeparateModelVerifier(
            _existing(self.kind, self.path), lm.decode, lm.eos_token_ids, prompt_text
        )


@dataclass(frozen=True)
class FunctionSpec(VerifierSpec):
    """``package.module:function``, a user's ``fn(text, complete) -> float``."""

    target: str
    kind = "python function"

    def to_string(self):
        return self.target

    def build(self, lm, *, max_tokens, prompt_text):
        from .verifiers import CallableVerifier

        return CallableVerifier.from_spec(self.target)


def _existing(kind: str, path: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{kind}: no verifier folder at {path!r}")
    return str(p)


def _letter_spec(arg: str) -> NoLetterSpec:
    letter, *opts = arg.split(",")
    if len(letter) != 1:
        raise ConfigError(
            f"no-letter: give exactly one letter to avoid, e.g. no-letter:e (got {letter!r})"
        )
    alpha = 0.3
    for o in opts:
        key, eq, val = o.partition("=")
        if key.strip() != "alpha" or not eq:
            raise ConfigError(
                f"no-letter: unknown option {o!r}; the only option is alpha=A, "
                "e.g. no-letter:e,alpha=0.3"
            )
        try:
            alpha = float(val)
        except ValueError:
            raise ConfigError(f"no-letter: alpha must be a number in (0, 1], got {val!r}") from None
    if not 0 < alpha <= 1:
        raise ConfigError(f"no-letter: alpha must be in (0, 1], got {alpha:g}")
    return NoLetterSpec(letter, alpha)


def _tests_spec(arg: str) -> UnitTestsSpec:
    path = Path(arg).expanduser()
    if not arg or not path.is_file():
        raise ConfigError(
            f"unit-tests: no such test file {arg!r}; give a Python file of asserts, "
            "e.g. unit-tests:tests.py"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"unit-tests: cannot read {arg!r} ({e})") from None
    return UnitTestsSpec(text, str(arg))


def parse_verifier(spec) -> VerifierSpec | Verifier:
    """A typed spec from a ``--verifier`` string; typed specs and verifier objects pass through."""
    if not isinstance(spec, str):
        return spec
    spec = spec.strip()
    if spec in ("none", ""):
        return NoVerifierSpec()
    if spec == "python-syntax":
        return PythonSyntaxSpec()
    if spec == "code-head":
        return CodeHeadSpec()
    kind, colon, arg = spec.partition(":")
    if kind == "no-letter":
        return _letter_spec(arg)
    if kind == "regex" and colon:
        if not arg:
            raise ConfigError("regex: give the pattern the response must match, e.g. regex:[a-z ]+")
        return RegexSpec(arg)
    if kind == "forbid" and colon:
        return ForbidSpec(tuple(w for w in arg.split("|") if w))
    if kind == "unit-tests" and colon:
        return _tests_spec(arg)
    if kind == "head" and colon:
        return HeadSpec(arg)
    if kind == "model" and colon:
        return ModelSpec(arg)
    if colon and arg.isidentifier() and all(p.isidentifier() for p in kind.split(".")):
        return FunctionSpec(spec)
    raise ConfigError(f"unknown verifier {spec!r}\n{VERIFIER_HELP}")


def make_language_model(model, tokenizer, verifier=None, **lm_kwargs) -> MLXLanguageModel:
    """The generator's ``MLXLanguageModel``; with a ``head:`` verifier the head is attached
    here, through the constructor (which checks that the model exposes hidden states)."""
    spec = parse_verifier(verifier) if verifier is not None else None
    head = spec.load_head(model) if isinstance(spec, HeadSpec) else None
    stop_text = getattr(spec, "stop_text", None)
    if stop_text and "eos_token_ids" not in lm_kwargs:  # the verifier's answers end there
        from .vocab import tokens_containing

        base = MLXLanguageModel(model, tokenizer)
        lm_kwargs["eos_token_ids"] = base.eos_token_ids | tokens_containing(tokenizer, stop_text)
    return MLXLanguageModel(model, tokenizer, value_head=head, **lm_kwargs)


def make_verifier(
    spec, lm: MLXLanguageModel, *, max_tokens: int, prompt_text: str | None = None
) -> Verifier:
    """A verifier from a spec (string, typed spec, or a ready verifier object), bound to the
    generator's tokenizer where it scores text."""
    from .verifiers import TextVerifier

    spec = parse_verifier(spec)
    v = (
        spec.build(lm, max_tokens=max_tokens, prompt_text=prompt_text)
        if isinstance(spec, VerifierSpec)
        else spec
    )
    if isinstance(v, TextVerifier) and v.decode is None:
        v.bind(lm.decode, lm.eos_token_ids)
    return v


def make_run_pair(
    model, tokenizer, verifier, *, max_tokens: int, prompt_text: str | None = None
) -> tuple[MLXLanguageModel, Verifier]:
    """(language model, verifier) for one run of ``model`` under ``verifier``."""
    spec = parse_verifier(verifier)
    lm = make_language_model(model, tokenizer, spec if isinstance(spec, VerifierSpec) else None)
    return lm, make_verifier(spec, lm, max_tokens=max_tokens, prompt_text=prompt_text)


def choice_names() -> list[str]:
    """The ``--choice`` names (mlx_vgb.children)."""
    from . import children

    return list(children.CHOICES)
