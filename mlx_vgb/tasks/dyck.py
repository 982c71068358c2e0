"""The Dyck grammar task of Botta et al. (arXiv 2502.12123) and the VGB paper's Dyck experiment.

Strings over two bracket types, ``(`` ``)`` and ``[`` ``]``, of exactly ``LENGTH`` = 32 brackets,
balanced, with nesting depth <= ``MAX_DEPTH`` = 12. The generator is Botta et al.'s random walk:
on an empty stack open a bracket; otherwise close with probability 1/2 (forced when the brackets
left equal the open ones, or at the depth limit), else open one. The type of an opening bracket
is drawn from ``type_probs``: (0.2, 0.8) for training (mostly ``[``), (0.8, 0.2) for the
out-of-distribution prompts (mostly ``(``).

A prompt is ``<bos>`` plus the first k brackets of a string; a completion must add the rest and
``<eos>``. Token ids: ``( [ ) ] <bos> <eos> <pad>`` = 0..6.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError

VOCAB = ("(", "[", ")", "]", "<bos>", "<eos>", "<pad>")
NUM_TYPES = 2
BOS, EOS, PAD = 4, 5, 6
LENGTH = 32
MAX_DEPTH = 12
TRAIN_TYPE_PROBS = (0.2, 0.8)
OOD_TYPE_PROBS = (0.8, 0.2)
DEFAULT_PROMPT_LENGTHS = (8, 24)  # prompt brackets k, drawn uniformly in [lo, hi]

_IDS = {t: i for i, t in enumerate(VOCAB)}


def sample_strings(
    n: int,
    rng: np.random.Generator,
    type_probs: Sequence[float] = TRAIN_TYPE_PROBS,
    length: int = LENGTH,
    max_depth: int = MAX_DEPTH,
) -> np.ndarray:
    """``n`` Dyck strings from the random walk, as bracket ids: int array (n, length)."""
    if length % 2:
        raise ConfigError(f"Dyck length must be even, got {length}")
    p = np.asarray(type_probs, dtype=np.float64)
    out = np.empty((n, length), dtype=np.int64)
    # draws for the whole batch up front (vectorized over strings, a loop over positions)
    coin = rng.random((n, length))
    kind = (rng.random((n, length)) >= p[0]).astype(np.int64)  # type 0 w.p. p[0]
    stack = np.zeros((n, max_depth + 1), dtype=np.int64)  # open bracket types, bottom first
    depth = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    for i in range(length):
        must_close = (depth == length - i) | (depth == max_depth)
        close = (depth > 0) & (must_close | (coin[:, i] < 0.5))
        top = stack[rows, np.maximum(depth - 1, 0)]
        out[:, i] = np.where(close, top + NUM_TYPES, kind[:, i])
        push = ~close
        stack[rows[push], depth[push]] = kind[push, i]
        depth = np.where(close, depth - 1, depth + 1)
    return out


def first_error(brackets: Sequence[int], length: int = LENGTH, max_depth: int = MAX_DEPTH) -> int:
    """Index of the first bracket after which the string can no longer be completed to a valid
    Dyck word of ``length`` (wrong or unmatched close, depth > max_depth, more open brackets
    than positions left, a non-bracket token, too long); -1 if none."""
    stack: list[int] = []
    for i, t in enumerate(brackets):
        t = int(t)
        if i >= length:
            return i
        if 0 <= t < NUM_TYPES:
            stack.append(t)
            if len(stack) > max_depth or len(stack) > length - i - 1:
                return i
        elif NUM_TYPES <= t < 2 * NUM_TYPES:
            if not stack or stack.pop() + NUM_TYPES != t:
                return i
        else:
            return i
    return -1


def is_valid_prefix(
    brackets: Sequence[int], length: int = LENGTH, max_depth: int = MAX_DEPTH
) -> bool:
    """Can ``brackets`` still be completed to a valid Dyck word of ``length``?"""
    return first_error(brackets, length, max_depth) == -1


def is_valid(brackets: Sequence[int], length: int = LENGTH, max_depth: int = MAX_DEPTH) -> bool:
    """A balanced bracket string of exactly ``length`` with depth <= ``max_depth``."""
    if len(brackets) != length or first_error(brackets, length, max_depth) != -1:
        return False
    depth = 0
    for t in brackets:
        depth += 1 if int(t) < NUM_TYPES else -1
    return depth == 0


def is_valid_completion(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> bool:
    """``prompt_ids`` (optionally starting with <bos>) + ``completion_ids`` (ending with <eos>)
    form a valid Dyck word of ``LENGTH``."""
    p = list(prompt_ids)
    if p and p[0] == BOS:
        p = p[1:]
    c = list(completion_ids)
    if not c or c[-1] != EOS:
        return False
    return is_valid(p + c[:-1])


def encode(text: str) -> list[int]:
    """Bracket text (special tokens written as ``<bos>`` etc.) -> ids."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "<":
            j = text.index(">", i) + 1
            out.append(_IDS[text[i:j]])
            i = j
        elif text[i].isspace():
            i += 1
        else:
            out.append(_IDS[text[i]])
            i += 1
    return out


def decode(ids: Sequence[int]) -> str:
    return "".join(VOCAB[int(t)] for t in ids)


def reward(prompt: str, completion: str) -> float:
    """The built-in outcome check (``--reward dyck``): 1.0 iff prompt + completion is a valid Dyck
    word of 32 brackets, depth <= 12. ``completion`` is the text before the final <eos>; any
    special token inside it makes it invalid."""
    try:
        ids = encode(prompt.replace("<bos>", "")) + encode(completion)
    except (KeyError, ValueError):
        return 0.0
    return float(is_valid(ids))


def make_prompts(
    n: int,
    seed: int,
    type_probs: Sequence[float] = OOD_TYPE_PROBS,
    prompt_lengths: tuple[int, int] = DEFAULT_PROMPT_LENGTHS,
    id_prefix: str = "dyck",
) -> list[dict]:
    """``n`` prompts: the first k brackets of a Dyck string, k uniform in ``prompt_lengths``.
    Each is ``{"id", "prompt", "max_tokens"}`` (``max_tokens``: brackets left + <eos>)."""
    rng = np.random.default_rng(seed)
    strings = sample_strings(n, rng, type_probs)
    ks = rng.integers(prompt_lengths[0], prompt_lengths[1] + 1, size=n)
    return [
        {
            "id": f"{id_prefix}-{seed}-{i}",
            "prompt": decode(s[:k]),
            "max_tokens": int(LENGTH - k + 1),
        }
        for i, (s, k) in enumerate(zip(strings, ks))
    ]


def write_prompts(path: str | Path, prompts: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in prompts)
    return path


def write_tokenizer(folder: str | Path) -> None:
    """A character-level ``tokenizers`` tokenizer (tokenizer.json + tokenizer_config.json) that
    prepends <bos>, so ``mlx_lm.load(folder)`` works on the Dyck LM folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    folder = Path(folder)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.add_special_tokens(["<bos>", "<eos>", "<pad>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    tok.decoder = decoders.Fuse()
    tok.save(str(folder / "tokenizer.json"))
    with open(folder / "tokenizer_config.json", "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<pad>",
                "add_bos_token": True,
                "model_max_length": LENGTH + 2,
            },
            f,
            indent=2,
        )


def completion_tilt(prompt: tuple[int, ...], response: tuple[int, ...]) -> float:
    """tau of a token response: 1 if prompt + response is a valid Dyck completion."""
    return float(is_valid_completion(prompt, response))
