"""Process verifiers -> mlx-vgb verifier folders (see mlx_vgb.verifier_format).

Kinds:
- ``value-head``: an MLP value head in a safetensors file (our own trained heads), read on
  the generator's hidden states (backbone "generator") unless a backbone folder is given.
- ``skywork-prm``: Skywork-o1-Open-PRM (Qwen2.5 + ``v_head.summary`` Linear(h, 1)); the score
  of a step is sigmoid(v_head(h)) at the step token ("\\n").
- ``qwen-prm``: Qwen2.5-Math-PRM (Qwen2 + ``score`` Linear-ReLU-Linear(2)); the score of a
  step is softmax(score(h))[1] at ``<extra_0>``.

Checkpoints are read with ``mx.load`` (safetensors, bfloat16 included): no torch.
The PRM backbone (all weights but the head) goes through ``mlx_lm.convert`` into the
``backbone/`` subfolder. Neither PRM has a usable LM head: when the checkpoint lacks
``lm_head.weight`` the backbone config ties the embeddings so mlx-lm can load it; its logits
are then meaningless and only its hidden states (``model.model(x)``) are used.
"""

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from ..verifier_format import (
    DEFAULT_BACKBONE_DIR,
    GENERATOR_BACKBONE,
    HeadConfig,
    ValueHead,
    VerifierConfig,
    VerifierFormatError,
    load_verifier,
    save_verifier,
)
from .hf import convert_hf
from .output import ConversionError, check_output

VERIFIER_KINDS = ("value-head", "skywork-prm", "qwen-prm")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class PRMSpec:
    head_prefixes: tuple[str, ...]  # first prefix present in the checkpoint wins
    activation: str
    output: str
    step_token: str


PRM_SPECS = {
    "skywork-prm": PRMSpec(("v_head.summary.", "v_head."), "relu", "sigmoid", "\n"),
    "qwen-prm": PRMSpec(("score.",), "relu", "softmax:1", "<extra_0>"),
}


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def mlp_layers(weights: dict[str, mx.array], prefix: str = "") -> list[tuple[mx.array, mx.array]]:
    """(weight (out, in), bias (out,)) of the Linear layers under ``prefix``, in index order.

    Works for ``prefix.weight`` (one Linear) and ``prefix.{i}.weight`` (nn.Sequential,
    ``layers.{i}``); a missing bias is zero. Consecutive layers must chain.
    """
    keys = sorted(
        (
            k
            for k in weights
            if k.startswith(prefix) and k.endswith(".weight") and weights[k].ndim == 2
        ),
        key=_natural_key,
    )
    if not keys:
        raise ConversionError(f"No Linear weights (2-D '*.weight') under {prefix!r}.")
    layers = []
    for k in keys:
        w = weights[k].astype(mx.float32)
        b = weights.get(k[: -len("weight")] + "bias")
        b = mx.zeros((w.shape[0],)) if b is None else b.astype(mx.float32)
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise ConversionError(
                f"Head layers do not chain: {k} takes {w.shape[1]} inputs, the previous layer "
                f"gives {layers[-1][0].shape[0]}."
            )
        layers.append((w, b))
    return layers


def _head(layers, activation: str, output: str) -> tuple[HeadConfig, ValueHead]:
    dims = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    try:
        config = HeadConfig(dims=dims, activation=activation, output=output)
    except VerifierFormatError as e:
        raise ConversionError(str(e)) from e
    head = ValueHead(config)
    head.load_weights(
        [
            (f"layers.{i}.{n}", a)
            for i, (w, b) in enumerate(layers)
            for n, a in (("weight", w), ("bias", b))
        ]
    )
    return config, head


def _read_checkpoint(src: Path) -> dict[str, mx.array]:
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ConversionError(
            f"{src} has no *.safetensors files; convert .bin checkpoints to safetensors first."
        )
    weights = {}
    for f in files:
        weights.update(mx.load(str(f)))
    return weights


def step_token_id(tokenizer_dir: Path, step_token: str) -> int:
    from tokenizers import Tokenizer

    file = tokenizer_dir / "tokenizer.json"
    if not file.is_file():
        raise ConversionError(f"{tokenizer_dir} has no tokenizer.json to look up the step token.")
    tok = Tokenizer.from_file(str(file))
    tid = tok.token_to_id(step_token)
    if tid is None:
        ids = tok.encode(step_token, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ConversionError(
                f"Step token {step_token!r} is not one token of this tokenizer (got {ids}); "
                "pass --step-token with a single-token separator."
            )
        tid = ids[0]
    return int(tid)


def _convert_prm(
    kind: str, src: Path, out: Path, step_token: str | None, force: bool, **convert_kwargs
) -> Path:
    spec = PRM_SPECS[kind]
    weights = _read_checkpoint(src)
    prefix = next((p for p in spec.head_prefixes if any(k.startswith(p) for k in weights)), None)
    if prefix is None:
        raise ConversionError(
            f"{src} has no {' / '.join(p + '*' for p in spec.head_prefixes)} weights: it is not "
            f"a {kind} checkpoint. Choose the --verifier-kind matching the model."
        )
    head_config, head = _head(mlp_layers(weights, prefix), spec.activation, spec.output)

    with open(src / "config.json") as f:
        hf_config = json.load(f)
    hidden = hf_config.get("hidden_size")
    if hidden != head_config.dims[0]:
        raise ConversionError(
            f"Head input {head_config.dims[0]} does not match the backbone hidden_size {hidden}."
        )
    backbone = {
        k.removeprefix("pretrained_model."): v
        for k, v in weights.items()
        if not k.startswith(prefix)
    }
    metadata = {"kind": kind, "source": str(src)}
    hf_config["architectures"] = [f"{hf_config.get('model_type', '').capitalize()}ForCausalLM"]
    if "lm_head.weight" not in backbone and not hf_config.get("tie_word_embeddings", False):
        hf_config["tie_word_embeddings"] = True
        metadata["backbone_logits"] = (
            "meaningless: no LM head, embeddings tied to let mlx-lm load it"
        )
    hf_config.pop("auto_map", None)

    step = step_token if step_token is not None else spec.step_token
    config = VerifierConfig(
        head=head_config,
        backbone=DEFAULT_BACKBONE_DIR,
        read_at="step_token",
        step_token=step,
        step_token_id=step_token_id(src, step),
        metadata=metadata,
    )
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        stripped = Path(tmp) / "hf"
        stripped.mkdir()
        mx.save_safetensors(
            str(stripped / "model.safetensors"), backbone, metadata={"format": "pt"}
        )
        with open(stripped / "config.json", "w") as f:
            json.dump(hf_config, f, indent=2)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, stripped / name)
        mlx_backbone = convert_hf(stripped, Path(tmp) / "backbone", **convert_kwargs)
        return save_verifier(
            out, config, head, backbone_src=mlx_backbone, force=force, move_backbone=True
        )


def _convert_value_head(
    src: Path,
    out: Path,
    backbone_path: Path | None,
    step_token: str | None,
    activation: str,
    output: str,
    pooling: str,
    force: bool,
) -> Path:
    if src.is_dir() and (src / "verifier_config.json").is_file():
        config, head, backbone = load_verifier(src)  # validate and copy
        return save_verifier(out, config, head, backbone_src=backbone, force=force)
    if not src.is_file():
        raise ConversionError(
            f"value-head source {src} must be a safetensors file with the head's Linear layers "
            "or a verifier folder."
        )
    head_config, head = _head(mlp_layers(mx.load(str(src))), activation, output)
    metadata = {"kind": "value-head", "source": str(src)}
    backbone = GENERATOR_BACKBONE
    token_id = None
    if backbone_path is not None:
        with open(Path(backbone_path) / "config.json") as f:
            hidden = json.load(f).get("hidden_size")
        if hidden != head_config.dims[0]:
            raise ConversionError(
                f"Head input {head_config.dims[0]} does not match the backbone hidden_size {hidden}."
            )
        backbone = DEFAULT_BACKBONE_DIR
        if step_token is not None:
            token_id = step_token_id(Path(backbone_path), step_token)
    config = VerifierConfig(
        head=head_config,
        backbone=backbone,
        pooling=pooling,
        read_at="step_token" if step_token is not None else "every_token",
        step_token=step_token,
        step_token_id=token_id,
        metadata=metadata,
    )
    return save_verifier(out, config, head, backbone_src=backbone_path, force=force)


def convert_verifier(
    kind: str,
    src: str | Path,
    mlx_path: str | Path,
    step_token: str | None = None,
    backbone_path: str | Path | None = None,
    activation: str = "relu",
    output: str = "sigmoid",
    pooling: str = "last",
    quantize: bool = False,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Convert a verifier checkpoint into an mlx-vgb verifier folder at ``mlx_path``.

    ``kind``: "value-head" (``src`` a head safetensors file; ``activation``, ``output``,
    ``pooling``, optional ``backbone_path`` mlx-lm folder), "skywork-prm" or "qwen-prm"
    (``src`` the Hugging Face folder; ``quantize``/``q_bits``/``q_group_size``/``dtype`` go to
    mlx_lm.convert for the backbone). ``step_token`` overrides the kind's step separator.
    """
    src, out = Path(src), Path(mlx_path)
    check_output(out, force)
    if kind not in VERIFIER_KINDS:
        raise ConversionError(
            f"Verifier kind {kind!r} is not supported; use one of {', '.join(VERIFIER_KINDS)}."
        )
    if kind == "value-head":
        return _convert_value_head(
            src,
            out,
            Path(backbone_path) if backbone_path else None,
            step_token,
            activation,
            output,
            pooling,
            force,
        )
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} is not a Hugging Face model folder (no config.json).")
    out.parent.mkdir(parents=True, exist_ok=True)
    return _convert_prm(
        kind,
        src,
        out,
        step_token,
        force,
        quantize=quantize,
        q_bits=q_bits,
        q_group_size=q_group_size,
        dtype=dtype,
    )
