"""HumanEval as a task: the function body of a completion, the docstring's visible examples as
a verifier (``DocstringExamples``), the hidden tests (``hidden_pass``), line and stop tokens.

The model completes the HumanEval prompt (signature + docstring, its final newline removed so
that the model writes newline + indent as one token, as it was trained) as plain text. The
completion is the response up to its first non-indented line (the function body).

Verifier (no training): V^ = 1 if prompt + finished body lines parse as the start of a Python
program (``PythonSyntax`` logic), else 0; tau at leaves = the docstring's visible examples
(``>>> call`` lines with their expected output, turned into asserts) pass in the sandbox; a
problem with no parseable example gets tau = the whole program compiles.
"""

from __future__ import annotations

import re

from ..verifiers import TextVerifier, python_prefix_ok
from ..vocab import newline_tokens


def body_of(text: str) -> str:
    """The function body: lines up to the first non-empty, non-indented one. The prompt's final
    newline is left to the model (SmolLM2 writes newline + indent as one token), so the first
    piece continues the docstring's closing line and is always kept."""
    first, *rest = text.split("\n")
    out = [first]
    for line in rest:
        if line.strip() and not line[:1].isspace():
            break
        out.append(line)
    return "\n".join(out)


_PROMPT_LINE = re.compile(r"^\s*>>>\s?(.*)$")


def visible_examples(prompt: str) -> str:
    """Asserts from the docstring's ``>>> call`` / expected-output pairs ('' if none parse)."""
    lines = prompt.split("\n")
    tests = []
    i = 0
    while i < len(lines):
        m = _PROMPT_LINE.match(lines[i])
        if not m:
            i += 1
            continue
        expr, expected = m.group(1).strip(), []
        i += 1
        while (
            i < len(lines)
            and lines[i].strip()
            and not _PROMPT_LINE.match(lines[i])
            and '"""' not in lines[i]
            and "'''" not in lines[i]
        ):
            expected.append(lines[i].strip())
            i += 1
        if not expected:
            continue
        t = f"assert ({expr}) == ({' '.join(expected)})"
        try:
            compile(t, "<example>", "exec")
        except SyntaxError:
            continue
        tests.append(t)
    return "\n".join(tests) + ("\n" if tests else "")


class DocstringExamples(TextVerifier):
    """V^: prompt + finished body lines may still parse; tau: visible examples pass."""

    def __init__(self, prompt: str, timeout_s: float = 10.0):
        prompt = prompt.rstrip("\n")
        self.prompt, self.tests, self.timeout_s = prompt, visible_examples(prompt), timeout_s
        self.memo: dict[str, float] = {}

    def value_text(self, text, n_tokens):
        body = body_of(text)
        code = self.prompt + body
        finished = code[: code.rfind("\n") + 1]
        return 1.0 if python_prefix_ok(finished) else 0.0

    def syntax_ok(self, text: str) -> bool:
        try:
            compile(self.prompt + body_of(text), "<response>", "exec")
            return True
        except (SyntaxError, ValueError, OverflowError):
            return False

    def tilt_text(self, text):
        from ..sandbox import run_tests

        body = body_of(text)
        if body not in self.memo:
            if not self.syntax_ok(text):
                self.memo[body] = 0.0
            elif not self.tests:
                self.memo[body] = 1.0
            else:
                self.memo[body] = float(
                    run_tests(self.prompt + body, self.tests, timeout_s=self.timeout_s).passed
                )
        return self.memo[body]


def hidden_pass(problem: dict, body: str, timeout_s: float = 10.0) -> bool:
    from ..sandbox import run_tests

    tests = problem["test"] + f"\ncheck({problem['entry_point']})\n"
    return run_tests(problem["prompt"].rstrip("\n") + body, tests, timeout_s=timeout_s).passed


def whitespace_stops(tok, vocab_size: int) -> tuple[frozenset[int], frozenset[int]]:
    """(tokens with a newline, whitespace-only tokens with a blank line: stop)."""
    t = newline_tokens(tok, vocab_size)
    return t.line, t.blank_only
