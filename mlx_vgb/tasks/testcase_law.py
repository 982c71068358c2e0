"""Test-case writing as the paper measured it (#16 part 4): an instruct coder lists N asserts
for a small list function (the precursor's task, Botta et al. 2025, arXiv 2502.12123).

Prompt (the model's chat template): one demonstration turn -- the user shows
``def f(a, b): return a + b`` and asks "List N test cases of the above function f, one in each
line.", the assistant answers with a python code block of N asserts on random digits (the
precursor's demonstration) -- then the task turn: a list function ``NAME(l, item)`` from
``FUNCTIONS`` with a random three-letter name and the same request. The answer is prefilled
with the opening fence, so the model's first token starts the first test. Actions are lines; a
response ends at the closing fence (a token holding ```), at EOS, or at the horizon.

tau (``analyse``): 1 when the response ended at the fence or EOS, every non-blank line is an
``assert`` that calls the target (``AssertLines``' rule: literals, comparisons, calls of the
target and a few pure builtins) and passes against the reference in the sandbox, there is at
least one, and the response has at most D line actions (``max_actions``, default 2N + 2; the
action holding the closing fence counts). Mode ``"all"`` (the default) leaves the number of
tests free, so its law is a measurement; ``"exactly-n"`` also asks for exactly N asserts (the
precursor's check, which counts fewer or extra tests as errors). Lines are checked once per
reference (memoized), all new lines of a call in one sandbox run.

Why D: VGB pads every leaf to the depth of the deepest possible leaf (``mlx_vgb.vgb``), and at
lambda = 1 the practical walk that steps onto a leaf m pad steps short of it keeps it with
probability 1 / (m + 1). ``Lines`` must assume a line may be one token (D = the horizon, ~160
here), which makes that ~1/150 for a 5-line response; with tau = 0 beyond D actions, every
leaf of positive tau sits within D and ``CappedLines`` pads to D (m + 1 ~ 6): the same exact
walk, ~25x fewer returns. The cap changes pi* only by the responses of more than D actions
(2N + 1 or more lines for N asked).

Analysis (``analyse``), per response: asserts; the parsed tests ``NAME(l, item) == expected``
with literal arguments; the list length ``len(l)`` of each; distinct passing tests (by the
parsed ``(l, item, expected)``, else the whitespace-normalized line); distinct *types*. The type
of a test is the shape of its call: the length class of ``l`` (``empty`` 0, ``one`` 1, ``short``
2-3, ``long`` >= 4), the item's Python type name, and whether the item occurs in ``l``
(``in`` / ``out``), e.g. ``short/int/out``; an assert that is not of the parsed form has type
``other``.

Prompts: ``make_problems(split, count, ...)``. Names come from one seeded permutation of the
three-letter names (Python keywords and builtins removed): the eval split takes them from the
front, the train split from the back, so no training prompt shares a name (or a prompt) with an
eval prompt. Functions cycle through ``FUNCTIONS`` by problem index.

Rewards for ``mlx-vgb train-verifier --reward testcase_law`` (``testcase_law_exact`` for the
exactly-N tau): the problem is read back from the prompt text (the last ``def NAME(l, item):``
and "List N test cases"). The reward sees only the text before the stop token, so it cannot
tell a response cut by the token limit exactly at a line end from a finished one (tau says 0,
the reward 1 if its lines pass); any other cut leaves an unfinished last line, which fails. It
counts line actions from the text (newlines + 1), which counts a token holding two newlines
twice (stricter than the tree's count).
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import random
import re
import string
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..actions import Lines
from ..errors import ConfigError
from .testcases import AssertLines

FENCE = "```"
PREFILL = "```python\n"
# body of NAME(l, item), indented four spaces; the reference runs in the sandbox
FUNCTIONS = {
    "append": "    l.append(item)\n    return l\n",
    "prepend": "    l.insert(0, item)\n    return l\n",
    "remove": "    return [x for x in l if x != item]\n",
    "count": "    return l.count(item)\n",
}
DEMO = "def f(a, b):\n    return a + b\n"
INSTRUCTION = "List {n} test cases of the above function {name}, one in each line."
TAU_MODES = ("all", "exactly-n")
SEED_STRIDE = 100  # seed s takes the names from position 100 * s of its split's order
NAME_SEED = 20251003  # the permutation of names (arXiv 2510.03149's date)
LENGTH_CLASSES = ((0, "empty"), (1, "one"), (3, "short"))  # (largest length, class); else long


@dataclass(frozen=True)
class Problem:
    id: str
    function: str  # a key of FUNCTIONS
    name: str
    n_tests: int
    demo: tuple[tuple[int, int], ...]  # the demonstration's (a, b) pairs

    @property
    def reference(self) -> str:
        return f"def {self.name}(l, item):\n{FUNCTIONS[self.function]}"

    def messages(self) -> list[dict]:
        demo_tests = "".join(f"assert f({a}, {b}) == {a + b}\n" for a, b in self.demo)
        return [
            {"role": "user", "content": DEMO + "\n" + INSTRUCTION.format(n=self.n_tests, name="f")},
            {"role": "assistant", "content": f"{PREFILL}{demo_tests}{FENCE}"},
            {
                "role": "user",
                "content": self.reference
                + "\n"
                + INSTRUCTION.format(n=self.n_tests, name=self.name),
            },
        ]


def _names() -> list[str]:
    bad = set(keyword.kwlist) | set(dir(builtins))
    names = [
        a + b + c
        for a in string.ascii_lowercase
        for b in string.ascii_lowercase
        for c in string.ascii_lowercase
        if a + b + c not in bad
    ]
    random.Random(NAME_SEED).shuffle(names)
    return names


def make_problems(
    split: str,
    count: int,
    n_tests: int,
    functions: Sequence[str] = tuple(FUNCTIONS),
    seed: int = 0,
) -> list[Problem]:
    """``count`` problems of ``split`` ("eval" or "train"); same arguments, same problems.
    ``seed`` shifts the names and demonstrations (another eval set)."""
    if split not in ("eval", "train"):
        raise ConfigError(f"unknown split {split!r}; choose eval or train")
    if not isinstance(n_tests, int) or n_tests < 1:
        raise ConfigError(f"the number of test cases N must be an integer >= 1, got {n_tests!r}")
    unknown = [f for f in functions if f not in FUNCTIONS]
    if unknown or not functions:
        raise ConfigError(
            f"unknown functions {unknown or '(none given)'}; choose from {', '.join(FUNCTIONS)}"
        )
    names = _names()
    half = len(names) // 2
    start = SEED_STRIDE * seed
    if count < 0 or seed < 0 or start + count > half:
        raise ConfigError(
            f"need count >= 0 and seed >= 0 with count + {SEED_STRIDE} * seed <= {half}"
        )
    picked = names[start : start + count] if split == "eval" else names[::-1][start : start + count]
    out = []
    for i, name in enumerate(picked):
        rng = random.Random(f"{split}-{seed}-{i}")
        fn = functions[i % len(functions)]
        demo = tuple((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(n_tests))
        out.append(Problem(f"{split}-{i:03d}-{fn}-{name}", fn, name, n_tests, demo))
    return out


def default_max_actions(n_tests: int) -> int:
    """D, the most line actions of a response with tau > 0 (the fence's action included)."""
    return 2 * n_tests + 2


@dataclass(frozen=True)
class CappedLines(Lines):
    """``Lines`` whose deepest leaf of positive tau is at ``depth`` actions: the walks pad to
    ``depth`` instead of to the horizon (tau = 0 beyond it, see the module docstring)."""

    depth: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ConfigError(f"CappedLines(depth=...) must be an integer >= 1, got {self.depth!r}")

    def max_depth(self, horizon: int) -> int:
        return min(self.depth, horizon)


def line_actions(tokens: Sequence[int], actions: Lines) -> int:
    """The number of line actions (tree depth) of a response's tokens under ``actions``."""
    depth, run = 0, 0
    for t in tokens:
        run += 1
        if actions.ends_block(run, int(t)):
            depth, run = depth + 1, 0
    return depth + (run > 0)


def chat_prompt(tokenizer, problem: Problem) -> str:
    """The prompt text: the chat template with the demonstration turn, the task turn and the
    answer prefilled with the opening fence."""
    head = tokenizer.apply_chat_template(
        problem.messages(), tokenize=False, add_generation_prompt=True
    )
    return head + PREFILL


def prompts_jsonl(tokenizer, problems: Iterable[Problem], max_tokens: int) -> str:
    """The prompts file of ``train-verifier --prompts`` (JSONL: id, prompt, max_tokens)."""
    return "".join(
        json.dumps({"id": p.id, "prompt": chat_prompt(tokenizer, p), "max_tokens": max_tokens})
        + "\n"
        for p in problems
    )


_DEF = re.compile(r"def ([a-z]{3})\(l, item\):\n((?:    .*\n)+)")
_ASK = re.compile(r"List (\d+) test cases of the above function ([a-z]{3}), one in each line\.")


def parse_prompt(prompt: str) -> tuple[str, str, int]:
    """(target name, reference source, N) of a prompt made by ``chat_prompt``."""
    defs, asks = _DEF.findall(prompt), _ASK.findall(prompt)
    if not defs or not asks or asks[-1][1] != defs[-1][0]:
        raise ConfigError(
            "the prompt holds no 'def NAME(l, item):' and 'List N test cases of the above "
            "function NAME' (make prompts with mlx_vgb.tasks.testcase_law.chat_prompt)"
        )
    name, body = defs[-1]
    return name, f"def {name}(l, item):\n{body}", int(asks[-1][0])


# -- checking and analysis ---------------------------------------------------------------------

_CHECKERS: dict[tuple[str, str], AssertLines] = {}


def checker(name: str, reference: str) -> AssertLines:
    """The memoized line checker of one target (one per process)."""
    key = (name, reference)
    if key not in _CHECKERS:
        _CHECKERS[key] = AssertLines(name, reference)
    return _CHECKERS[key]


@dataclass(frozen=True)
class Test:
    """One parsed ``assert NAME(l, item) == expected`` with literal arguments."""

    lst: list  # the call's l
    item: object
    expected: object

    @property
    def key(self) -> str:
        return repr((self.lst, self.item, self.expected))

    @property
    def kind(self) -> str:
        n = len(self.lst)
        cls = next((c for top, c in LENGTH_CLASSES if n <= top), "long")
        try:
            where = "in" if self.item in self.lst else "out"
        except Exception:  # noqa: BLE001 - an exotic literal whose == raises
            where = "out"
        return f"{cls}/{type(self.item).__name__}/{where}"


def parse_test(line: str, name: str) -> Test | None:
    """The test of an assert line of the form ``assert NAME(l, item) == expected`` (l a list
    literal, item and expected literals), else None."""
    try:
        tree = ast.parse(line.strip(), mode="exec")
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    t = tree.body[0].test
    if not (
        isinstance(t, ast.Compare)
        and len(t.ops) == 1
        and isinstance(t.ops[0], ast.Eq)
        and isinstance(t.left, ast.Call)
        and isinstance(t.left.func, ast.Name)
        and t.left.func.id == name
        and len(t.left.args) == 2
        and not t.left.keywords
    ):
        return None
    try:
        lst, item = (ast.literal_eval(a) for a in t.left.args)
        expected = ast.literal_eval(t.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(lst, list):
        return None
    return Test(lst, item, expected)


@dataclass
class Analysis:
    """What one response holds (see the module docstring)."""

    tau: float
    complete: bool  # ended at the fence or EOS
    actions: int  # line actions (tree depth)
    lines: int  # non-blank lines
    asserts: int
    passed: int  # passing assert lines
    list_lengths: list[int] = field(default_factory=list)  # len(l) of every parsed test
    distinct_tests: int = 0  # distinct passing tests
    distinct_types: int = 0  # distinct types of the passing tests
    tests: list[str] = field(default_factory=list)  # keys of the passing tests, in order
    types: list[str] = field(default_factory=list)  # their types


def response_lines(text: str) -> list[str]:
    """The non-blank lines of a response's text (before the closing fence), stripped."""
    return [s.strip() for s in text.split("\n") if s.strip()]


def analyse(
    text: str,
    name: str,
    reference: str,
    n_tests: int,
    complete: bool,
    tau_mode: str = "all",
    actions: int | None = None,
    max_actions: int | None = None,
) -> Analysis:
    """tau and the analysis of one response's text (the text before its stop token);
    ``complete``: it ended at the fence or EOS (not at the horizon); ``actions``: its line
    actions (default: counted from the text, newlines + 1); ``max_actions``: D (default
    ``default_max_actions(n_tests)``)."""
    if tau_mode not in TAU_MODES:
        raise ConfigError(f"unknown tau mode {tau_mode!r}; choose one of {', '.join(TAU_MODES)}")
    if actions is None:
        actions = text.count("\n") + 1
    if max_actions is None:
        max_actions = default_max_actions(n_tests)
    lines = response_lines(text)
    chk = checker(name, reference)
    chk.check_lines(lines)
    ok = [chk.memo[ln] for ln in lines]
    asserts = [ln for ln in lines if ln.startswith("assert")]
    tau = bool(complete and lines and all(ok) and actions <= max_actions)
    if tau_mode == "exactly-n":
        tau = tau and len(lines) == n_tests
    lengths, keys, kinds = [], [], []
    for ln, good in zip(lines, ok):
        t = parse_test(ln, name)
        if t is not None:
            lengths.append(len(t.lst))
        if good:
            keys.append(t.key if t is not None else " ".join(ln.split()))
            kinds.append(t.kind if t is not None else "other")
    return Analysis(
        tau=1.0 if tau else 0.0,
        complete=complete,
        actions=actions,
        lines=len(lines),
        asserts=len(asserts),
        passed=sum(ok),
        list_lengths=lengths,
        distinct_tests=len(set(keys)),
        distinct_types=len(set(kinds)),
        tests=keys,
        types=kinds,
    )


def _reward(prompt: str, completion: str, tau_mode: str) -> float:
    name, ref, n = parse_prompt(prompt)
    # the completion is the text before the stop token; see the module docstring
    return analyse(completion, name, ref, n, complete=True, tau_mode=tau_mode).tau


def reward(prompt: str, completion: str) -> float:
    """tau (every line a passing assert, any number) for ``--reward testcase_law``."""
    return _reward(prompt, completion, "all")


def reward_exact(prompt: str, completion: str) -> float:
    """tau with exactly N asserts, for ``--reward testcase_law_exact``."""
    return _reward(prompt, completion, "exactly-n")


reward.stop_text = FENCE  # train-verifier ends the rollouts at the closing fence
reward_exact.stop_text = FENCE


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m mlx_vgb.tasks.testcase_law --split train --count 96 --n-tests 4 --out F``:
    the prompts file of ``train-verifier``."""
    import argparse

    from ..atomic import atomic_write
    from ..models import MODEL_HELP

    p = argparse.ArgumentParser(
        prog="python -m mlx_vgb.tasks.testcase_law", description=main.__doc__
    )
    p.add_argument("--model", default="qwen2.5-coder-0.5b", help=MODEL_HELP)
    p.add_argument("--split", default="train", choices=("train", "eval"))
    p.add_argument("--count", type=int, required=True, help="number of prompts")
    p.add_argument("--n-tests", type=int, required=True, help="N, test cases asked for")
    p.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated")
    p.add_argument("--max-tokens", type=int, required=True, help="rollout horizon per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL file to write")
    a = p.parse_args(list(argv) if argv is not None else None)
    from ..generate import load

    try:
        probs = make_problems(
            a.split, a.count, a.n_tests, [f.strip() for f in a.functions.split(",")], a.seed
        )
    except ConfigError as e:
        p.error(str(e))
    _, tok = load(a.model)
    atomic_write(a.out, prompts_jsonl(tok, probs, a.max_tokens))
    print(f"wrote {len(probs)} prompts ({a.split}) to {a.out}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
