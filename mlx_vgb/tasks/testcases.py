"""Test-case writing (after Botta et al.): the model lists asserts for a small list function.

Prompt (completion style, no chat template): a one-shot example (a list function with a random
name and three asserts), then the target function (a random name ``f_xyz``, body from a fixed
list) and ``# 8 test cases for f_xyz``. Actions are lines; a response ends at EOS, at a blank
line (any token containing two newlines ends the response, like a stop sequence) or at H tokens
(the unfinished last line is then dropped).

Verifier (no training, ``AssertLines``): V^(prefix) = 1 if every finished line so far is an
``assert`` that calls the target and passes against the reference function in the sandbox,
else 0. The floor is 0, not a small positive number, because it is exact: a prefix with a
failing line can never reach tau = 1, so its true value is 0; the only error of V^ is optimism
(V^ = 1 for a prefix whose continuations may all fail). tau = V^ of the finished lines and at
least one assert. Each new line is checked once (memoized by text); all unknown lines of a
batch of prefixes run in ONE sandbox call. ``reward`` is the same check as an outcome reward
for ``mlx-vgb train-verifier --reward testcases``.
"""

from __future__ import annotations

import ast
import json
import random
import string

import numpy as np

from ..verifiers import TextVerifier
from ..vocab import newline_tokens

EXAMPLE = (
    "def {name}(lst):\n    return [x * 2 for x in lst]\n\n"
    "# 3 test cases for {name}\n"
    "assert {name}([1, 2]) == [2, 4]\n"
    "assert {name}([]) == []\n"
    "assert {name}([-3, 0, 5]) == [-6, 0, 10]\n"
)
REFERENCES = [
    "return sorted(set(lst))",
    "return [x for x in lst if x % 2 == 0]",
    "return lst[::-1]",
    "return sum(x * x for x in lst)",
]


def random_name(rng: random.Random) -> str:
    return "f_" + "".join(rng.choice(string.ascii_lowercase) for _ in range(3))


def make_problem(i: int, seed: int) -> dict:
    rng = random.Random(1000 * seed + i)
    name, ex = random_name(rng), random_name(rng)
    while ex == name:
        ex = random_name(rng)
    body = REFERENCES[i % len(REFERENCES)]
    ref = f"def {name}(lst):\n    {body}\n"
    prompt = (
        "# A function and its test cases\n" + EXAMPLE.format(name=ex) + "\n\n"
        "# Another function and its test cases\n" + ref + "\n"
        f"# 8 test cases for {name}\n"
    )
    return dict(name=name, reference=ref, body=body, prompt=prompt)


def training_prompts(n_seeds: int, eval_seed: int = 0, max_tokens: int = 64) -> list[dict]:
    """Prompts for ``mlx-vgb train-verifier``: every reference function under ``n_seeds`` other
    seeds (new random names and one-shot examples), never the benchmark's own problems."""
    seeds = [s for s in range(n_seeds + 1) if s != eval_seed][:n_seeds]
    out = []
    for s in seeds:
        for i in range(len(REFERENCES)):
            prob = make_problem(i, s)
            out.append(
                {
                    "id": f"s{s}-{i}-{prob['name']}",
                    "prompt": prob["prompt"],
                    "max_tokens": max_tokens,
                }
            )
    return out


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(target name, reference source) from a prompt made by ``make_problem``."""
    head, _, _ = prompt.rpartition("# 8 test cases for ")
    ref = head[head.rfind("\ndef ") + 1 :].strip("\n") + "\n"
    name = ref[len("def ") : ref.index("(")]
    return name, ref


_VERIFIERS: dict[str, "AssertLines"] = {}


def reward(prompt: str, completion: str) -> float:
    """Outcome reward for ``mlx-vgb train-verifier --reward testcases``:
    tau of the benchmark. The response ends at its first blank line (the benchmark's stop) or at
    EOS; a response cut by the token limit loses its unfinished last line."""
    name, ref = parse_prompt(prompt)
    if ref not in _VERIFIERS:
        _VERIFIERS[ref] = AssertLines(name, ref)
    ver = _VERIFIERS[ref]
    cut = completion.find("\n\n")
    # without a blank line the text cannot say whether EOS or the limit ended it: the last
    # piece counts as unfinished (conservative: an assert right before EOS is not counted)
    text = completion[: cut + 1] if cut >= 0 else completion
    lines = AssertLines.finished_lines(text, complete=cut >= 0)
    ver.check_lines(lines)
    return 1.0 if lines and all(ver.memo[ln] for ln in lines) else 0.0


# what a model-written assert line may contain (see AssertLines._syntactic)
_ASSERT_NODES = (
    ast.Assert,
    ast.Expr,
    ast.Compare,
    ast.BoolOp,
    ast.UnaryOp,
    ast.BinOp,
    ast.IfExp,
    ast.Call,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
    ast.Subscript,
    ast.Slice,
    ast.Name,
    ast.Load,
    ast.keyword,
    ast.cmpop,
    ast.boolop,
    ast.unaryop,
    ast.operator,
)
_PURE_BUILTINS = frozenset(
    {
        "len",
        "sorted",
        "set",
        "list",
        "tuple",
        "sum",
        "min",
        "max",
        "abs",
        "all",
        "any",
        "reversed",
        "range",
        "str",
        "int",
        "float",
        "bool",
    }
)

_HARNESS = """
import json as _json
_lines = _json.loads({lines!r})
_ok = []
for _l in _lines:
    try:
        exec(compile(_l, "<test>", "exec"), dict(globals()))
        _ok.append(True)
    except BaseException:
        _ok.append(False)
print("@@RESULT@@" + _json.dumps(_ok))
"""


class AssertLines(TextVerifier):
    """V^ = 1 if every finished line is a passing ``assert NAME(...)`` (0 otherwise)."""

    def __init__(self, name: str, reference: str, stop_ids=(), timeout_s: float = 10.0):
        self.name, self.reference, self.timeout_s = name, reference, timeout_s
        self.stop_ids = frozenset(stop_ids)  # end a response; kept in the text (bind: true EOS)
        self.memo: dict[str, bool] = {}
        self.sandbox_calls = 0

    def _syntactic(self, line: str) -> bool:
        """A single ``assert`` over literals, comparisons and calls of the target or a few pure
        builtins: the model writes these lines and they run beside the harness that collects
        the per-line results, so nothing else may be reachable (no attributes, no other names:
        ``sys.settrace`` in one line could otherwise switch off the asserts of the next)."""
        try:
            tree = ast.parse(line, mode="exec")
        except (SyntaxError, ValueError):
            return False
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
            return False
        calls_target = False
        for node in ast.walk(tree.body[0]):
            if not isinstance(node, _ASSERT_NODES):
                return False
            if isinstance(node, ast.Name) and node.id not in _PURE_BUILTINS | {self.name}:
                return False
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name):
                    return False
                calls_target |= node.func.id == self.name
        return calls_target

    def check_lines(self, lines) -> None:
        """Fill the memo for ``lines`` with one sandbox call (one per line if that fails)."""
        from ..sandbox import run_tests

        todo = [ln for ln in dict.fromkeys(lines) if ln not in self.memo]
        for ln in todo:
            if not self._syntactic(ln):
                self.memo[ln] = False
        todo = [ln for ln in todo if ln not in self.memo]
        if not todo:
            return
        self.sandbox_calls += 1
        res = run_tests(
            self.reference, _HARNESS.format(lines=json.dumps(todo)), timeout_s=self.timeout_s
        )
        out = [s for s in res.stdout.splitlines() if s.startswith("@@RESULT@@")]
        if res.passed and out:
            for ln, ok in zip(todo, json.loads(out[-1][len("@@RESULT@@") :])):
                self.memo[ln] = bool(ok)
            return
        for ln in todo:  # a line that hangs or crashes the interpreter: check one by one
            self.sandbox_calls += 1
            self.memo[ln] = run_tests(self.reference, ln, timeout_s=self.timeout_s).passed

    @staticmethod
    def finished_lines(text: str, complete: bool) -> list[str]:
        parts = text.split("\n")
        if not complete or len(parts) > 1:
            parts = parts[:-1]  # the last piece is unfinished (or empty after a final newline)
        return [p.strip() for p in parts if p.strip()]

    def _scores(self, texts, complete: bool, leaf: bool = False):
        lines = [self.finished_lines(t, complete) for t in texts]
        self.check_lines([ln for ls in lines for ln in ls])
        out = []
        for ls in lines:
            ok = all(self.memo[ln] for ln in ls)
            out.append(1.0 if ok and (ls or not leaf) else 0.0)
        return np.array(out, float)

    def value(self, prefixes):
        return self._scores([self._text(p) for p in prefixes], False)

    def tilt(self, responses):
        texts = [self._text(r) for r in responses]
        # an EOS / stop-token ending finishes the last line; a horizon cut drops it
        ends = self.eos_token_ids | self.stop_ids
        done = [bool(r) and r[-1] in ends for r in responses]
        return np.array([self._scores([t], d, leaf=True)[0] for t, d in zip(texts, done)], float)


def analyse(text: str, ver: AssertLines, stopped: bool) -> tuple[int, int]:
    lines = AssertLines.finished_lines(text, stopped)
    ver.check_lines(lines)
    asserts = [ln for ln in lines if ln.startswith("assert")]
    correct = {" ".join(ln.split()) for ln in lines if ver.memo.get(ln)}
    return len(asserts), len(correct)


def stop_tokens(tok, vocab_size: int) -> tuple[frozenset[int], frozenset[int]]:
    """(line ends: tokens with one newline, stop: tokens with two newlines in a row)."""
    t = newline_tokens(tok, vocab_size)
    return t.line - t.blank, t.blank
