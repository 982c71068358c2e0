"""The mlx-vgb verifier folder: a value head V^ on the hidden states of a backbone.

A verifier folder holds::

    verifier_config.json   what to run and where to read the score (below)
    head.safetensors       the head's weights: layers.{i}.weight (out, in), layers.{i}.bias (out,)
    backbone/              optional: an mlx-lm model folder (config.json, model*.safetensors,
                           tokenizer files) whose hidden states feed the head

``verifier_config.json``::

    {
      "format": "mlx-vgb-verifier",
      "format_version": 1,
      "backbone": "generator",      # hidden states of the generator being sampled, or a
                                    # relative subfolder (e.g. "backbone") with an mlx-lm model
      "hidden_layer": -1,           # -1: the final, normed hidden state (model.model(x))
      "pooling": "last",            # "last": score each position from its own hidden state;
                                    # "mean": mean of the hidden states up to that position
      "head": {
        "type": "mlp",
        "dims": [hidden, ..., out], # Linear(dims[i], dims[i+1]) for each i, with bias
        "activation": "relu",       # between layers: "relu" | "gelu" | "tanh"
        "output": "sigmoid"         # "sigmoid" | "identity" (out = 1) or "softmax:K"
                                    # (probability of class K, out >= K + 1)
      },
      "read_at": "every_token",     # or "step_token": the score of a step is read at the
                                    # position of the step token that ends it
      "step_token": "\\n",          # optional, the step token as text
      "step_token_id": 198,         # optional, its id in the backbone's tokenizer
      "metadata": {}                # free: source checkpoint, training run, ...
    }

The head maps a hidden state of shape (..., hidden) to one score per position, shape (...):
``output(mlp(h))``. Both files are readable without MLX (json + numpy safetensors).
Examples: a trained value head on the generator (backbone "generator", sigmoid, every
token); Skywork-o1-Open-PRM (Linear(h, 1), sigmoid, read at the step token);
Qwen2.5-Math-PRM (Linear-ReLU-Linear(2), softmax:1, read at ``<extra_0>``).
"""

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx import nn

from .atomic import publish_folder
from .errors import VGBError

FORMAT = "mlx-vgb-verifier"
FORMAT_VERSION = 1
CONFIG_FILE = "verifier_config.json"
HEAD_FILE = "head.safetensors"
GENERATOR_BACKBONE = "generator"
DEFAULT_BACKBONE_DIR = "backbone"

ACTIVATIONS = ("relu", "gelu", "tanh")
POOLINGS = ("last", "mean")
READ_AT = ("every_token", "step_token")


class VerifierFormatError(VGBError, ValueError):
    """A verifier folder or config that does not follow the mlx-vgb verifier format."""


@dataclass
class HeadConfig:
    dims: list[int]
    activation: str = "relu"
    output: str = "sigmoid"
    type: str = "mlp"

    def __post_init__(self):
        if self.type != "mlp":
            raise VerifierFormatError(f"head.type {self.type!r} is not supported; use 'mlp'.")
        if (
            not isinstance(self.dims, (list, tuple))
            or len(self.dims) < 2
            or not all(isinstance(d, int) and d > 0 for d in self.dims)
        ):
            raise VerifierFormatError(
                f"head.dims must list at least two positive ints [hidden, ..., out], got {self.dims!r}."
            )
        self.dims = list(self.dims)
        if self.activation not in ACTIVATIONS:
            raise VerifierFormatError(
                f"head.activation {self.activation!r} is not supported; use one of {ACTIVATIONS}."
            )
        out = self.dims[-1]
        if self.output in ("sigmoid", "identity"):
            if out != 1:
                raise VerifierFormatError(
                    f"head.output {self.output!r} needs dims[-1] == 1, got {out}; "
                    "use 'softmax:K' for a classifier head."
                )
        elif self.output.startswith("softmax:"):
            k = self.softmax_class
            if k is None or not 0 <= k < out or out < 2:
                raise VerifierFormatError(
                    f"head.output {self.output!r} needs an int class K with 0 <= K < dims[-1] "
                    f"= {out} and at least two classes."
                )
        else:
            raise VerifierFormatError(
                f"head.output {self.output!r} is not supported; use 'sigmoid', 'identity' "
                "or 'softmax:K'."
            )

    @property
    def softmax_class(self) -> int | None:
        if not self.output.startswith("softmax:"):
            return None
        try:
            return int(self.output.split(":", 1)[1])
        except ValueError:
            return None


@dataclass
class VerifierConfig:
    head: HeadConfig
    backbone: str = GENERATOR_BACKBONE
    hidden_layer: int = -1
    pooling: str = "last"
    read_at: str = "every_token"
    step_token: str | None = None
    step_token_id: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if isinstance(self.head, dict):
            self.head = _head_from_dict(self.head)
        if self.format != FORMAT:
            raise VerifierFormatError(f"format is {self.format!r}, expected {FORMAT!r}.")
        if self.format_version != FORMAT_VERSION:
            raise VerifierFormatError(
                f"format_version {self.format_version!r} is not supported by this mlx-vgb "
                f"(reads version {FORMAT_VERSION}); upgrade mlx-vgb or re-convert the verifier."
            )
        if self.backbone != GENERATOR_BACKBONE:
            p = Path(self.backbone)
            if not self.backbone or p.is_absolute() or ".." in p.parts:
                raise VerifierFormatError(
                    f"backbone must be 'generator' or a relative subfolder name, got "
                    f"{self.backbone!r}."
                )
        if not isinstance(self.hidden_layer, int):
            raise VerifierFormatError(f"hidden_layer must be an int, got {self.hidden_layer!r}.")
        if self.pooling not in POOLINGS:
            raise VerifierFormatError(
                f"pooling {self.pooling!r} is not supported; use one of {POOLINGS}."
            )
        if self.read_at not in READ_AT:
            raise VerifierFormatError(
                f"read_at {self.read_at!r} is not supported; use one of {READ_AT}."
            )
        if self.read_at == "step_token" and self.step_token is None and self.step_token_id is None:
            raise VerifierFormatError(
                "read_at 'step_token' needs step_token (text) or step_token_id (int)."
            )
        if self.step_token_id is not None and not isinstance(self.step_token_id, int):
            raise VerifierFormatError(f"step_token_id must be an int, got {self.step_token_id!r}.")
        if not isinstance(self.metadata, dict):
            raise VerifierFormatError("metadata must be a JSON object.")

    @property
    def hidden_size(self) -> int:
        return self.head.dims[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["head"] = {"type": self.head.type, **{k: v for k, v in d["head"].items() if k != "type"}}
        order = [
            "format",
            "format_version",
            "backbone",
            "hidden_layer",
            "pooling",
            "head",
            "read_at",
            "step_token",
            "step_token_id",
            "metadata",
        ]
        return {k: d[k] for k in order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VerifierConfig":
        if not isinstance(d, dict):
            raise VerifierFormatError(f"{CONFIG_FILE} must hold a JSON object.")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise VerifierFormatError(f"unknown keys in {CONFIG_FILE}: {sorted(unknown)}.")
        if "head" not in d:
            raise VerifierFormatError(f"{CONFIG_FILE} has no 'head'.")
        if d.get("format") != FORMAT:
            raise VerifierFormatError(
                f"{CONFIG_FILE} has format {d.get('format')!r}, expected {FORMAT!r}."
            )
        return cls(**d)


def _head_from_dict(d: Any) -> HeadConfig:
    if not isinstance(d, dict):
        raise VerifierFormatError("head must be a JSON object.")
    unknown = set(d) - {"type", "dims", "activation", "output"}
    if unknown:
        raise VerifierFormatError(f"unknown keys in head: {sorted(unknown)}.")
    if "dims" not in d:
        raise VerifierFormatError("head has no 'dims'.")
    return HeadConfig(**d)


class ValueHead(nn.Module):
    """MLP head: hidden states (..., hidden) -> one score per position (...)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        dims = config.dims
        self.layers = [nn.Linear(i, o) for i, o in pairwise(dims)]

    def logits(self, hidden: mx.array) -> mx.array:
        act = {"relu": nn.relu, "gelu": nn.gelu, "tanh": mx.tanh}[self.config.activation]
        x = hidden
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = act(x)
            x = layer(x)
        return x

    def __call__(self, hidden: mx.array) -> mx.array:
        x = self.logits(hidden.astype(self.layers[0].weight.dtype))
        out = self.config.output
        if out == "sigmoid":
            return mx.sigmoid(x[..., 0])
        if out == "identity":
            return x[..., 0]
        return mx.softmax(x.astype(mx.float32), axis=-1)[..., self.config.softmax_class]


def pool_hidden(hidden: mx.array, pooling: str) -> mx.array:
    """Apply ``config.pooling`` along the sequence axis of (B, L, hidden) states.

    "last" leaves each position as is; "mean" makes position t the mean of positions 0..t, so
    scoring position t sees the whole prefix either way.
    """
    if pooling == "last":
        return hidden
    if pooling == "mean":
        n = mx.arange(1, hidden.shape[-2] + 1, dtype=mx.float32)[:, None]
        return (mx.cumsum(hidden.astype(mx.float32), axis=-2) / n).astype(hidden.dtype)
    raise VerifierFormatError(f"pooling {pooling!r} is not supported; use one of {POOLINGS}.")


def head_weights(head: ValueHead) -> dict[str, mx.array]:
    return {
        f"layers.{i}.{name}": getattr(layer, name)
        for i, layer in enumerate(head.layers)
        for name in ("weight", "bias")
    }


def _check_head_weights(weights: dict[str, mx.array], config: HeadConfig) -> None:
    dims = config.dims
    expected = {}
    for i, (din, dout) in enumerate(pairwise(dims)):
        expected[f"layers.{i}.weight"] = (dout, din)
        expected[f"layers.{i}.bias"] = (dout,)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise VerifierFormatError(
            f"{HEAD_FILE} does not match head.dims {dims}: missing {missing}, unexpected {extra}."
        )
    for k, shape in expected.items():
        if tuple(weights[k].shape) != shape:
            raise VerifierFormatError(
                f"{HEAD_FILE}: {k} has shape {tuple(weights[k].shape)}, head.dims {dims} "
                f"needs {shape}."
            )


def save_verifier(
    path: str | Path,
    config: VerifierConfig,
    head: ValueHead,
    backbone_src: str | Path | None = None,
    force: bool = False,
    move_backbone: bool = False,
) -> Path:
    """Write a verifier folder atomically (temp folder, then rename).

    ``backbone_src``: an mlx-lm model folder copied (moved if ``move_backbone``) to
    ``config.backbone``, which must then name a subfolder. An existing ``path`` is refused
    unless ``force``.
    """
    path = Path(path)
    if config.backbone == GENERATOR_BACKBONE and backbone_src is not None:
        raise VerifierFormatError(
            "backbone_src given but config.backbone is 'generator'; set config.backbone to a "
            "subfolder name such as 'backbone'."
        )
    if config.backbone != GENERATOR_BACKBONE and backbone_src is None:
        raise VerifierFormatError(
            f"config.backbone is {config.backbone!r}: pass backbone_src, the mlx-lm model "
            "folder to store there."
        )
    weights = head_weights(head)
    _check_head_weights(weights, config.head)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass force=True to replace it.")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump(config.to_dict(), f, indent=2)
        mx.save_safetensors(
            str(tmp / HEAD_FILE),
            {k: v.astype(mx.float32) for k, v in weights.items()},
            metadata={"format": FORMAT},
        )
        if backbone_src is not None:
            if move_backbone:
                shutil.move(str(backbone_src), str(tmp / config.backbone))
            else:
                shutil.copytree(backbone_src, tmp / config.backbone)
        publish_folder(tmp, path, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_verifier_config(path: str | Path) -> VerifierConfig:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise VerifierFormatError(
            f"{path} is not an mlx-vgb verifier folder (no {CONFIG_FILE}); create one with "
            "`mlx-vgb convert --verifier-kind ...` or save_verifier()."
        )
    try:
        with open(cfg_file) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise VerifierFormatError(f"{cfg_file} is not valid JSON: {e}") from e
    try:
        return VerifierConfig.from_dict(d)
    except TypeError as e:
        raise VerifierFormatError(f"{cfg_file}: {e}") from e


def load_verifier(path: str | Path) -> tuple[VerifierConfig, ValueHead, Path | None]:
    """Read a verifier folder: (config, head with its weights, backbone folder or None).

    The backbone path is None when the head reads the generator's own hidden states.
    """
    path = Path(path)
    config = load_verifier_config(path)
    head_file = path / HEAD_FILE
    if not head_file.is_file():
        raise VerifierFormatError(f"{path} has no {HEAD_FILE}.")
    weights = mx.load(str(head_file))
    _check_head_weights(weights, config.head)
    head = ValueHead(config.head)
    head.load_weights(list(weights.items()))
    mx.eval(head.parameters())

    backbone = None
    if config.backbone != GENERATOR_BACKBONE:
        backbone = path / config.backbone
        if not (backbone / "config.json").is_file():
            raise VerifierFormatError(
                f"backbone folder {backbone} is missing or has no config.json; re-convert "
                "the verifier."
            )
    return config, head, backbone
