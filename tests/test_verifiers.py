"""Programmatic verifiers and the text bridge."""

from mlx_vgb.verifiers import (
    AllOf,
    ForbiddenStrings,
    LetterAvoidance,
    PythonSyntax,
    RegexMatch,
    UnitTests,
    extract_code,
)


def bind(v, text_of):
    return v.bind(lambda toks: text_of[tuple(toks)])


def test_letter_avoidance_is_alpha_power_times_indicator():
    v = LetterAvoidance("e", alpha=0.5, horizon=4)
    assert v.value_text("a cat", 1) == 0.5**3
    assert v.value_text("a cat", 4) == 1.0
    assert v.value_text("the", 2) == 0.0
    assert v.tilt_text("A CAT") == 1.0 and v.tilt_text("AN EEL") == 0.0


def test_regex_partial_and_full_match():
    v = RegexMatch(r"[a-z]+ \d+")
    assert v.value_text("abc", 1) == 1.0  # can still match
    assert v.value_text("abc 4", 1) == 1.0
    assert v.value_text("ab1", 1) == 0.0  # can never match
    assert v.tilt_text("abc") == 0.0 and v.tilt_text("abc 12") == 1.0


def test_python_syntax_prefixes():
    v = PythonSyntax()
    assert v.value_text("def f(x):\n    return (x +\n", 0) == 1.0  # unclosed: still possible
    assert v.value_text("def f(x):\n    return x)\n", 0) == 0.0  # cannot be fixed
    assert v.value_text("x = (1,\n  2", 0) == 1.0  # unfinished last line is not judged
    assert v.tilt_text("def f(x):\n    return x\n") == 1.0
    assert v.tilt_text("def f(x):\n    return (x\n") == 0.0
    assert extract_code("Sure:\n```python\nx = 1\n```\nDone") == "x = 1\n"


def test_unit_tests_run_in_sandbox_at_leaves():
    v = UnitTests("assert add(2, 3) == 5\nassert add(-1, 1) == 0\n")
    assert v.tilt_text("def add(a, b):\n    return a + b\n") == 1.0
    assert v.tilt_text("def add(a, b):\n    return a - b\n") == 0.0
    assert v.tilt_text("def add(a, b):\n    while True: pass\n") == 0.0  # timed out, contained


def test_text_bridge_and_product():
    texts = {(1,): "ok", (1, 2): "ok then", (1, 2, 3): "ok then fail"}
    v = AllOf(bind(ForbiddenStrings(["fail"]), texts), bind(LetterAvoidance("z", 1.0, 3), texts))
    assert list(v.value([(1,), (1, 2), (1, 2, 3)])) == [1.0, 1.0, 0.0]
