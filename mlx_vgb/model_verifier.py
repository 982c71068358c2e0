"""Learned verifiers on MLX: a value head on the generator's hidden states, or a separate
verifier model (mlx-lm backbone + head) with its own trimmed KV cache.

A separate verifier may use another tokenizer: prefixes are bridged through text (the
generator's tokens are decoded, the text is encoded with the verifier's tokenizer). Its
backbone runs under an ``MLXLanguageModel``, so it gets the same trunk / branch KV caching as
the generator: a backtrack trims, a revisit recomputes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError
from .lm import MLXLanguageModel
from .protocols import BaseVerifier
from .verifier_format import GENERATOR_BACKBONE, load_verifier


class GeneratorHeadVerifier(BaseVerifier):
    """V^ from a value head on the generator's own last hidden state (same forward as pi_ref).
    tau = the head's score at the leaf, unless ``tilt_fn(tokens) -> float`` is given."""

    def __init__(self, lm: MLXLanguageModel, tilt_fn=None):
        if lm.value_head is None:
            raise ConfigError("the language model has no value head attached")
        self.lm, self.tilt_fn = lm, tilt_fn

    def value(self, prefixes):
        return np.clip(self.lm.values(prefixes), 0.0, None)

    def tilt(self, responses):
        if self.tilt_fn is not None:
            return np.array([float(self.tilt_fn(tuple(r))) for r in responses])
        return self.value(responses)


class SeparateModelVerifier(BaseVerifier):
    """A verifier folder with its own backbone. ``decode`` maps generator tokens to text."""

    def __init__(self, path: str | Path, decode, eos_token_ids=(), prompt_text=None):
        from mlx_lm import load as mlx_load

        cfg, head, backbone = load_verifier(path)
        if backbone is None:
            raise ConfigError(f"{path}: this verifier reads the generator's hidden states "
                              "(backbone 'generator'); use --verifier head:PATH instead")
        model, tok = mlx_load(str(backbone))
        self.cfg, self.tokenizer = cfg, tok
        self.lm = MLXLanguageModel(model, tok, value_head=head)
        self.decode = decode
        self.eos = frozenset(eos_token_ids)
        self.prompt_text = prompt_text  # set by begin() callers that know the prompt as text
        self.step_id = cfg.step_token_id
        if cfg.read_at == "step_token" and self.step_id is None:
            if cfg.step_token is None:
                raise ConfigError(f"{path}: read_at=step_token needs step_token or step_token_id")
            ids = tok.encode(cfg.step_token, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"{path}: step token {cfg.step_token!r} is not one token")
            self.step_id = ids[0]

    def begin(self, prompt: Sequence[int]) -> None:
        text = self.prompt_text if self.prompt_text is not None else self.decode(list(prompt))
        self._prompt_ids = list(self.tokenizer.encode(text))
        self.lm.begin(self._prompt_ids)

    def _ids(self, tokens: Sequence[int]) -> tuple[int, ...]:
        text = self.decode([t for t in tokens if t not in self.eos])
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        if self.cfg.read_at == "step_token":
            ids = ids + (self.step_id,)
        return ids

    def value(self, prefixes):
        rows = [self._ids(p) for p in prefixes]
        return np.clip(self.lm.values(rows), 0.0, None)

    def tilt(self, responses):
        return self.value(responses)


def is_generator_head(path: str | Path) -> bool:
    from .verifier_format import load_verifier_config

    return load_verifier_config(path).backbone == GENERATOR_BACKBONE
