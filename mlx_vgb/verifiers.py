"""Verifiers that need no training, on text, and the bridge from generator tokens to text.

A ``TextVerifier`` decodes the generator's token prefix to text (the generator's tokenizer),
then scores text: ``value_text(text, n_tokens)`` for V^, ``tilt_text(text)`` for tau. This is
also how a generator and a verifier with different tokenizers meet: through text.

- ``LetterAvoidance``: the paper's "no letter e": r = 1 if the letter is absent, V^ =
  alpha^(H - h) * r (h tokens so far), tau = r.
- ``RegexMatch``: the response must fully match a pattern; V^ = 1 while a partial match is
  still possible (``regex``'s partial matching), else 0.
- ``ForbiddenStrings``: no listed string may appear (case-insensitive).
- ``PythonSyntax``: every finished line so far parses as the start of a Python program; at the
  end the whole program parses.
- ``UnitTests``: at leaves the program runs with the given tests in the sandbox (pass = 1);
  inside, another verifier (default ``PythonSyntax``) gives V^.
- ``CallableVerifier``: a user's ``fn(text, complete) -> float``.
- ``AllOf``: the product of several verifiers.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Sequence

import numpy as np
import regex

from .errors import ConfigError
from .protocols import BaseVerifier


class TextVerifier(BaseVerifier):
    """Scores decoded text. ``decode`` maps generator token ids to text (set by ``bind``)."""

    decode: Callable[[Sequence[int]], str] | None = None
    eos_token_ids: frozenset[int] = frozenset()

    def bind(self, decode: Callable[[Sequence[int]], str], eos_token_ids=()) -> "TextVerifier":
        self.decode, self.eos_token_ids = decode, frozenset(eos_token_ids)
        return self

    def _text(self, tokens: Sequence[int]) -> str:
        if self.decode is None:
            raise ConfigError(
                f"{type(self).__name__} needs the generator's tokenizer: call "
                ".bind(decode) or pass it through mlx_vgb.generate"
            )
        return self.decode([t for t in tokens if t not in self.eos_token_ids])

    def value(self, prefixes):
        return np.array([self.value_text(self._text(p), len(p)) for p in prefixes], float)

    def tilt(self, responses):
        return np.array([self.tilt_text(self._text(r)) for r in responses], float)

    def value_text(self, text: str, n_tokens: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def tilt_text(self, text: str) -> float:
        return self.value_text(text, 0)


class LetterAvoidance(TextVerifier):
    def __init__(self, letter: str = "e", alpha: float = 0.3, horizon: int = 32):
        if len(letter) != 1:
            raise ConfigError(f"no-letter needs a single character, got {letter!r}")
        if not 0 < alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {alpha}")
        self.letter, self.alpha, self.horizon = letter.lower(), alpha, horizon

    def _r(self, text: str) -> float:
        return 0.0 if self.letter in text.lower() else 1.0

    def value_text(self, text, n_tokens):
        return self.alpha ** max(self.horizon - n_tokens, 0) * self._r(text)

    def tilt_text(self, text):
        return self._r(text)


class RegexMatch(TextVerifier):
    def __init__(self, pattern: str):
        try:
            self.pattern = regex.compile(pattern)
        except regex.error as e:
            raise ConfigError(f"bad regex {pattern!r}: {e}") from None

    def value_text(self, text, n_tokens):
        return 1.0 if self.pattern.fullmatch(text, partial=True) else 0.0

    def tilt_text(self, text):
        return 1.0 if self.pattern.fullmatch(text) else 0.0


class ForbiddenStrings(TextVerifier):
    def __init__(self, words: Sequence[str]):
        self.words = [w.lower() for w in words if w]
        if not self.words:
            raise ConfigError("forbid: give at least one string, e.g. forbid:foo|bar")

    def value_text(self, text, n_tokens):
        low = text.lower()
        return 0.0 if any(w in low for w in self.words) else 1.0


_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n?")


def extract_code(text: str) -> str:
    """The code of a response: inside the first ``` fence if there is one, else all of it."""
    m = _FENCE.search(text)
    if m is None:
        return text
    rest = text[m.end() :]
    end = rest.find("```")
    return rest if end < 0 else rest[:end]


_INCOMPLETE = (
    "was never closed",
    "unexpected EOF",
    "expected an indented block",
    "unterminated triple-quoted",
    "EOF while scanning",
    "incomplete input",
)


def python_prefix_ok(code: str) -> bool:
    """True if ``code`` (finished lines only) can still start a valid Python program."""
    try:
        compile(code, "<prefix>", "exec")
        return True
    except SyntaxError as e:
        msg = str(e.msg if hasattr(e, "msg") else e)
        return any(s in msg for s in _INCOMPLETE)
    except (ValueError, OverflowError):
        return False


def starts_with_prose(text: str) -> bool:
    """True if the first finished non-empty line of ``text`` cannot start a Python program (a
    chat model's "Here is the code:" before its ``` fence)."""
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.strip():
            return not python_prefix_ok(line + "\n")
    return False


class PythonSyntax(TextVerifier):
    """``prefix``: code the program must start with (e.g. a HumanEval signature + docstring).
    The code is the first ``` fence's content if there is one; with ``prose`` (default) a
    response may open with prose lines before its fence (V^ = 1 until the fence; tau then needs
    the fenced code, or the whole text, to parse)."""

    def __init__(self, prefix: str = "", floor: float = 0.0, prose: bool = True):
        self.prefix, self.floor, self.prose = prefix, floor, prose

    def value_text(self, text, n_tokens):
        code = self.prefix + extract_code(text)
        finished = code[: code.rfind("\n") + 1] if "\n" in code else ""
        if python_prefix_ok(finished):
            return 1.0
        if self.prose and _FENCE.search(text) is None and starts_with_prose(text):
            return 1.0
        return self.floor

    def tilt_text(self, text):
        try:
            compile(self.prefix + extract_code(text), "<response>", "exec")
            return 1.0
        except (SyntaxError, ValueError, OverflowError):
            return self.floor


def check_tests(tests: str, source_name: str = "the tests") -> None:
    """Raise ConfigError, naming ``source_name`` and the line, unless ``tests`` parses as
    Python and holds at least one ``assert`` or a call of ``check``/``assert*`` (else every
    program would pass, or none could, and a sampler would search until its budget ends)."""
    import ast

    try:
        tree = ast.parse(tests, filename=source_name)
    except SyntaxError as e:
        where = f"{source_name}, line {e.lineno}" if e.lineno else source_name
        text = f": {e.text.strip()}" if e.text and e.text.strip() else ""
        raise ConfigError(
            f"{where}: the tests are not valid Python ({e.msg}){text}. Fix the "
            "file so that `python -m py_compile` accepts it."
        ) from None
    except ValueError as e:  # a NUL byte (SyntaxError from Python 3.12 on)
        raise ConfigError(f"{source_name}: the tests are not valid Python ({e})") from None

    def is_check(node) -> bool:
        if isinstance(node, ast.Assert):
            return True
        if not isinstance(node, ast.Call):
            return False
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return name.startswith(("check", "assert"))

    if not any(is_check(node) for node in ast.walk(tree)):
        raise ConfigError(
            f"{source_name}: no assert statement and no check(...) call, so the "
            "tests cannot fail; add one, e.g. `assert add(2, 3) == 5`"
        )


class UnitTests(TextVerifier):
    """tau = 1 if ``program_prefix + code`` passes ``tests`` in the sandbox, else 0.

    The program and the tests run in two sandboxed interpreters (``mlx_vgb.sandbox.run_tests``):
    the program cannot skip asserts or forge the verdict. The tests are checked here (they
    parse, they hold an assert or a check call); ``source_name`` names them in the error.
    """

    def __init__(
        self,
        tests: str,
        program_prefix: str = "",
        inner: TextVerifier | None = None,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        source_name: str = "the tests",
    ):
        check_tests(tests, source_name)
        self.tests, self.program_prefix = tests, program_prefix
        self.inner = inner if inner is not None else PythonSyntax(program_prefix)
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.runs = 0

    def bind(self, decode, eos_token_ids=()):
        self.inner.bind(decode, eos_token_ids)
        return super().bind(decode, eos_token_ids)

    def value_text(self, text, n_tokens):
        return self.inner.value_text(text, n_tokens)

    def tilt_text(self, text):
        from .sandbox import run_tests

        self.runs += 1
        res = run_tests(
            self.program_prefix + extract_code(text),
            self.tests,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
        )
        return 1.0 if res.passed else 0.0


class CallableVerifier(TextVerifier):
    """``fn(text: str, complete: bool) -> float``: V^ on prefixes, tau on complete responses."""

    def __init__(self, fn: Callable[[str, bool], float]):
        self.fn = fn

    def value_text(self, text, n_tokens):
        return float(self.fn(text, False))

    def tilt_text(self, text):
        return float(self.fn(text, True))

    @classmethod
    def from_spec(cls, spec: str) -> "CallableVerifier":
        mod, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"cannot import verifier function {spec!r} ({e}); give "
                "'package.module:function' importable from the current directory"
            )
        if not callable(fn):
            raise ConfigError(f"{spec!r} is not callable")
        return cls(fn)


class AllOf(BaseVerifier):
    """Product of verifiers (values and tilts multiply; bounds multiply)."""

    def __init__(self, *verifiers):
        self.verifiers = verifiers
        self.bound = float(np.prod([getattr(v, "bound", 1.0) for v in verifiers]))

    def begin(self, prompt):
        for v in self.verifiers:
            v.begin(prompt)

    def end(self):
        for v in self.verifiers:
            if hasattr(v, "end"):
                v.end()

    def value(self, prefixes):
        return np.prod([np.asarray(v.value(prefixes), float) for v in self.verifiers], axis=0)

    def tilt(self, responses):
        return np.prod([np.asarray(v.tilt(responses), float) for v in self.verifiers], axis=0)
