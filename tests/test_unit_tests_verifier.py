"""The unit-tests verifier refuses tests that cannot judge anything, when it is built."""

import pytest

from mlx_vgb.errors import ConfigError
from mlx_vgb.verifiers import UnitTests


def test_tests_with_a_syntax_error_are_refused_naming_file_and_line():
    with pytest.raises(ConfigError, match=r"tests\.py, line 2: the tests are not valid Python"):
        UnitTests("assert add(1, 2) == 3\nassert add(2, 2) == (4\n", source_name="tests.py")
    with pytest.raises(ConfigError, match=r"the tests, line 1"):
        UnitTests("def check(candidate:\n    pass\n")
    with pytest.raises(ConfigError, match="not valid Python"):
        UnitTests("assert f()\x00\n", source_name="t.py")


@pytest.mark.parametrize("tests", ["", "# only a comment\n", "x = 1\nprint(add(1, 2))\n"])
def test_tests_without_an_assert_or_check_are_refused(tests):
    with pytest.raises(ConfigError, match=r"my_tests\.py: no assert statement"):
        UnitTests(tests, source_name="my_tests.py")


@pytest.mark.parametrize(
    "tests",
    [
        "assert add(2, 3) == 5\n",
        "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n",
        "import unittest\nunittest.TestCase().assertEqual(add(2, 3), 5)\n",
    ],
)
def test_valid_tests_build_and_judge(tests):
    v = UnitTests(tests, source_name="tests.py")
    assert v.tilt_text("def add(a, b):\n    return a + b\n") == 1.0
    assert v.tilt_text("def add(a, b):\n    return a * b\n") == 0.0
