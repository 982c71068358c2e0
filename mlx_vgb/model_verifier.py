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
from .verifier_format import load_verifier


class ValueHeadVerifier(BaseVerifier):
    """V^ from a value head on the last hidden state of ``lm`` (anything with ``values``).

    - the generator's own ``MLXLanguageModel`` (built with ``value_head=``): V^ comes from the
      same forward as pi_ref; or a separate copy of a backbone (``own_lm=True``): ``begin``
      binds it to the prompt and V^ costs its own forward (the seed's "verifier of the same
      size").
    - ``tilt``: tau at leaves, ``tilt(prompt, response) -> float``; None: the head's value of
      the complete response (a learned verifier everywhere).
    - ``floor``: V^ is clipped below at ``floor`` (0 keeps it a probability).
    """

    def __init__(
        self, lm, *, tilt=None, own_lm: bool = False, floor: float = 0.0, bound: float = 1.0
    ):
        if getattr(lm, "value_head", getattr(lm, "head", None)) is None:
            raise ConfigError(
                "the language model has no value head attached: build it with "
                "value_head=... (mlx_vgb.registry.make_language_model)"
            )
        self.lm, self._tilt, self.own_lm = lm, tilt, own_lm
        self.floor, self.bound = floor, bound
        self.prompt: tuple[int, ...] = ()

    def begin(self, prompt: Sequence[int]) -> None:
        self.prompt = tuple(int(t) for t in prompt)
        if self.own_lm:
            self.lm.begin(self.prompt)

    def end(self) -> None:
        if self.own_lm:
            self.lm.end()

    def value(self, prefixes):
        return np.clip(np.asarray(self.lm.values(prefixes), dtype=np.float64), self.floor, None)

    def tilt(self, responses):
        if self._tilt is None:
            return self.value(responses)
        return np.array([float(self._tilt(self.prompt, tuple(r))) for r in responses])


class SeparateModelVerifier(BaseVerifier):
    """A verifier folder with its own backbone. ``decode`` maps generator tokens to text."""

    def __init__(self, path: str | Path, decode, eos_token_ids=(), prompt_text=None):
        from mlx_lm import load as mlx_load

        cfg, head, backbone = load_verifier(path)
        if backbone is None:
            raise ConfigError(
                f"{path}: this verifier reads the generator's hidden states "
                "(backbone 'generator'); use --verifier head:PATH instead"
            )
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

    def end(self) -> None:
        self.lm.end()

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
