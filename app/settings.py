"""What the form sends for one run (``RunSettings``): its fields, their checks (messages that
name the field) and the typed verifier setting they make (``mlx_vgb.registry``)."""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import (
    SAMPLERS,
    CodeHeadSpec,
    ForbidSpec,
    FunctionSpec,
    HeadSpec,
    ModelSpec,
    NoLetterSpec,
    NoVerifierSpec,
    PythonSyntaxSpec,
    RegexSpec,
    UnitTestsSpec,
    VerifierSpec,
    parse_block,
)

log = logging.getLogger("mlx_vgb.app")

GENERATOR_DEFAULT = "default"
GENERATOR_FOLDER = "local MLX folder"
GENERATOR_HUB = "hub id"
GENERATOR_PICK = "picked"  # the model picker's value: default, a registry name, folder or hub id
GENERATORS = (GENERATOR_DEFAULT, GENERATOR_PICK, GENERATOR_FOLDER, GENERATOR_HUB)
DEFAULT_MODEL_CHOICE = "default"
CHOICES = ("default", "rejection", "self-normalized", "enumerate")

VERIFIERS = (
    "none",
    "no-letter",
    "regex",
    "forbid",
    "python-syntax",
    "unit-tests",
    "head",
    "code-head",
    "model",
    "python function",
)
BASELINES = ("plain", "action-rs")
BLOCKS = ("token", "line", "2", "4", "8", "16")
MAX_LOADED_MODELS = 2


@dataclass
class RunSettings:
    """Everything the form sends for one run."""

    prompt: str = ""
    generator: str = GENERATOR_DEFAULT
    model_path: str = ""
    verifier: str = "none"
    letter: str = "e"
    alpha: float = 0.3
    pattern: str = ""
    words: str = ""
    tests: str = ""
    verifier_path: str = ""
    function: str = ""
    sampler: str = "vgb"
    choice: str = "default"  # child-choice rule of the walks (mlx_vgb.children.CHOICES)
    block: str = "token"
    candidates: int = 8
    temp: float = 1.0
    max_tokens: int = 64
    max_steps: int = 0  # 0: no limit
    seed: int = 0
    drift: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    system_prompt: str = ""
    prefill: str = ""  # the answer starts with this text (the model continues it)
    compare: bool = False
    baseline: str = "action-rs"

    def block_value(self):
        return parse_block(self.block)

    def model_spec(self, default: str | None) -> str | None:
        path = (self.model_path or "").strip()
        if self.generator == GENERATOR_DEFAULT or (
            self.generator == GENERATOR_PICK and path in ("", DEFAULT_MODEL_CHOICE)
        ):
            return default
        if self.generator == GENERATOR_PICK:
            return resolve_model(path)
        if not path:
            raise ConfigError(
                f"generator '{self.generator}': type the folder path or hub id in the model box"
            )
        if self.generator == GENERATOR_FOLDER and not os.path.isdir(os.path.expanduser(path)):
            raise ConfigError(
                f"no folder at {path!r}: give an MLX model folder (convert other "
                "formats with `mlx-vgb convert`)"
            )
        return path

    def verifier_settings(self) -> VerifierSpec:
        """The typed verifier setting of these fields (``mlx_vgb.registry``)."""
        kind = self.verifier
        if kind == "none":
            return NoVerifierSpec()
        if kind == "no-letter":
            letter = (self.letter or "").strip()
            if len(letter) != 1:
                raise ConfigError(f"letter avoidance needs exactly one letter, got {letter!r}")
            if self.alpha is None or not 0 < float(self.alpha) <= 1:
                raise ConfigError(f"letter avoidance: alpha must be in (0, 1], got {self.alpha!r}")
            return NoLetterSpec(letter, float(self.alpha))
        if kind == "regex":
            if not self.pattern:
                raise ConfigError("regex verifier: type a pattern the response must match")
            return RegexSpec(self.pattern)
        if kind == "forbid":
            # spaces count ("a " bans "a " only); empty entries are dropped
            words = [w for w in (self.words or "").replace("\n", "|").split("|") if w.strip()]
            if not words:
                raise ConfigError("forbidden strings: type at least one, separated by |")
            return ForbidSpec(tuple(words))
        if kind == "python-syntax":
            return PythonSyntaxSpec()
        if kind == "code-head":
            return CodeHeadSpec()
        if kind == "unit-tests":
            if not (self.tests or "").strip():
                raise ConfigError(
                    "unit tests: type Python asserts (they run after the "
                    "response's code, in the sandbox)"
                )
            return UnitTestsSpec(self.tests, str(_saved_tests(self.tests, "tests", ".py")))
        if kind in ("head", "model"):
            path = (self.verifier_path or "").strip()
            if not path:
                raise ConfigError(f"{kind} verifier: type the verifier folder's path")
            path = os.path.expanduser(path)
            return HeadSpec(path) if kind == "head" else ModelSpec(path)
        if kind == "python function":
            fn = (self.function or "").strip()
            if ":" not in fn:
                raise ConfigError(
                    "python function verifier: give 'package.module:function' "
                    "(fn(text, complete) -> float)"
                )
            return FunctionSpec(fn)
        raise ConfigError(f"unknown verifier kind {kind!r}; choose one of {', '.join(VERIFIERS)}")

    def check(self) -> None:
        """Every field in range, else a ``FieldError`` naming the field as the form labels it."""
        if not (self.prompt or "").strip():
            raise FieldError("Prompt", "the prompt is empty: type what the model should answer")
        for name, label, lo in (
            ("max_tokens", "Max tokens (H)", 1),
            ("candidates", "Candidates K", 1),
            ("max_steps", "Max steps", 0),
            ("top_k", "top-k", 0),
            ("seed", "Seed", 0),
        ):
            v = getattr(self, name)
            if v is None or not isinstance(v, (int, float)) or int(v) != v or v < lo:
                raise FieldError(
                    label,
                    f"must be a whole number >= {lo}, got {v!r}"
                    + (" (0: no limit)" if name == "max_steps" else ""),
                )
        for name, label, lo, hi, lo_open in (
            ("temp", "Temperature", 0, None, False),
            ("drift", "Drift lambda", 0, 1, True),
            ("top_p", "top-p", 0, 1, True),
            ("alpha", "alpha", 0, 1, True),
        ):
            v = getattr(self, name)
            if name == "alpha" and self.verifier != "no-letter":
                continue
            bad = (
                v is None
                or not isinstance(v, (int, float))
                or v < lo
                or (lo_open and v == lo)
                or (hi is not None and v > hi)
            )
            if bad:
                rng = f"in ({lo}, {hi}]" if hi is not None else f">= {lo}"
                raise FieldError(label, f"must be {rng}, got {v!r}")
        if self.sampler not in SAMPLERS:
            raise FieldError("Sampler", f"choose one of {', '.join(SAMPLERS)}")
        if self.choice not in CHOICES:
            raise FieldError("Choice rule", f"choose one of {', '.join(CHOICES)}")
        if self.compare and self.baseline not in BASELINES:
            raise FieldError("Baseline", f"choose one of {', '.join(BASELINES)}")
        try:
            self.block_value()
        except ConfigError as e:
            raise FieldError("Block (action)", str(e)) from None

    def stream_kwargs(self, sampler: str, verifier) -> dict:
        return dict(
            verifier=verifier,
            sampler=sampler,
            max_tokens=int(self.max_tokens),
            temp=float(self.temp),
            top_p=float(self.top_p),
            top_k=int(self.top_k or 0),
            seed=int(self.seed or 0),
            block=self.block_value(),
            candidates=int(self.candidates),
            max_steps=int(self.max_steps) if self.max_steps else None,
            drift=float(self.drift),
            choice=None if self.choice in ("", "default") else self.choice,
            system_prompt=(self.system_prompt or None),
            prefill_response=(self.prefill or None),
        )


class FieldError(ConfigError):
    """A form field is out of range; the message starts with the field's label."""

    def __init__(self, field_label: str, message: str):
        self.field = field_label
        super().__init__(f"{field_label}: {message}")


def model_choices(default_label: str) -> list[tuple[str, str]]:
    """The model picker: the default, the registry's models (``mlx_vgb.models``, marked when on
    disk) and other converted folders; empty extras where the registry is not there."""
    out = [(f"default ({default_label})", DEFAULT_MODEL_CHOICE)]
    try:
        from .. import models as reg

        rows, others = reg.status()
        for r in rows:
            where = "on disk" if r.folders else "downloads on first use"
            out.append((f"{r.name}: {r.description} [{where}]", r.name))
        out += [(f"local: {p}", str(p)) for p in others]
    except Exception:  # noqa: BLE001 - no registry (or no cache): the default and typed paths
        log.debug("model registry unavailable", exc_info=True)
    return out


def resolve_model(name: str) -> str:
    """A picked model -> what ``load`` takes: a registry name is pulled (``mlx_vgb.models``)."""
    try:
        from .. import models as reg
    except Exception:  # noqa: BLE001
        reg = None
    if reg is not None and name in getattr(reg, "REGISTRY", {}):
        return reg.resolve(name)
    p = os.path.expanduser(name)
    if name.startswith((".", "/", "~")) and not os.path.isdir(p):
        raise FieldError(
            "Model",
            f"no folder at {name!r}: give an MLX model folder (convert "
            "other formats with `mlx-vgb convert`)",
        )
    return p if os.path.isdir(p) else name


def _saved_tests(text: str, stem: str, suffix: str):
    from .userfiles import saved_file  # userfiles raises this module's FieldError

    return saved_file(text, stem, suffix)


def command_line(s: RunSettings, default_model: str | None) -> str:
    """The ``mlx-vgb generate`` command that runs the same settings (the tests box is saved as a
    file under the app's folder, which the command names)."""
    try:
        spec = s.verifier_settings().to_string()
    except Exception:  # noqa: BLE001 - the run itself reports bad settings
        spec = "?"
    parts = ["mlx-vgb", "generate"]
    picked = (s.model_path or "").strip()
    model = (
        default_model
        if s.generator == GENERATOR_DEFAULT
        or (s.generator == GENERATOR_PICK and picked in ("", DEFAULT_MODEL_CHOICE))
        else picked
    )
    if model:
        parts += ["--model", model]
    parts += [
        "--prompt",
        s.prompt,
        "--verifier",
        spec,
        "--sampler",
        s.sampler,
        "--max-tokens",
        str(s.max_tokens),
        "--temp",
        f"{s.temp:g}",
        "--seed",
        str(s.seed),
        "--candidates",
        str(s.candidates),
    ]
    if s.choice and s.choice != "default":
        parts += ["--choice", s.choice]
    if s.block and s.block != "token":
        parts += ["--block", s.block]
    if s.max_steps:
        parts += ["--max-steps", str(s.max_steps)]
    if s.drift != 1 or s.block == "line":  # the command line's default for lines is 0.5
        parts += ["--drift", f"{s.drift:g}"]
    if s.top_p != 1:
        parts += ["--top-p", f"{s.top_p:g}"]
    if s.top_k:
        parts += ["--top-k", str(s.top_k)]
    if s.system_prompt:
        parts += ["--system-prompt", s.system_prompt]
    if s.prefill:
        parts += ["--prefill-response", s.prefill]
    return " ".join(shlex.quote(p) for p in parts) + " --verbose"
