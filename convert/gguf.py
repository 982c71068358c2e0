"""GGUF -> MLX model folder that `mlx_lm.load` reads (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with the chat template).

Architectures: llama, qwen2, qwen3, gemma3 (-> mlx-lm's gemma3_text).

Weights: Q4_0, Q4_1 and Q8_0 stay quantized, repacked into MLX's affine format with group
size 32 (bit-exact with what `mx.load` makes of them). Every other type gguf-py can dequantize
(F32/F16/BF16, Q5_0/Q5_1, the K-quants Q2_K..Q6_K, IQ*) is dequantized with
`gguf.quants.dequantize` and then either cast to ``dtype`` or, with ``q_bits``, re-quantized with
`mx.quantize` (group size 32). Defaults follow the platform: on Apple silicon float16 and
``q_bits=4``; elsewhere (MLX on the CPU) float32 and no re-quantization. ``dequantize=True``
makes every weight ``dtype``. One-dimensional tensors (norms, biases) stay float32, as in the
GGUF: they keep the activations in float32, which MLX computes much faster on CPU.

Rotary embeddings: for the "llama" architecture llama.cpp stores the q/k projection rows
permuted so that rotary pairs are adjacent (GPT-J / "traditional" layout). The converter
undoes that permutation (row-wise, so it works on quantized rows as well) and writes
``rope_traditional: false``: the folder has the Hugging Face layout, like any mlx-lm llama.
`load_gguf` instead keeps the GGUF layout and runs it with ``rope_traditional=True``; the
two agree, which the tests check. Qwen2/3 and Gemma 3 GGUFs are not permuted (NEOX rope).
Gemma 3: llama.cpp stores RMSNorm weights as 1 + w; mlx-lm adds the 1 itself, so it is removed.

The tokenizer is rebuilt from the GGUF metadata (see gguf_tokenizer.py).
"""

import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn

from .gguf_tokenizer import build_tokenizer as _build_tokenizer
from .output import ConversionError, atomic_output, check_free_space, check_output

GROUP_SIZE = 32
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
DEFAULT_DTYPE = "float16" if sys.platform == "darwin" else "float32"
DEFAULT_Q_BITS = 4 if sys.platform == "darwin" else None
DTYPES = ("float16", "bfloat16", "float32")
Q_BITS = (2, 3, 4, 5, 6, 8)

# GGML block layouts kept quantized: name -> (bits, bytes per block of 32)
_KEPT = {"Q4_0": (4, 18), "Q4_1": (4, 20), "Q8_0": (8, 34)}
# GGUF architecture -> (mlx-lm model_type, Hugging Face class)
_MODEL_TYPES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}
# llama.cpp's fixed Gemma 3 hyper-parameters (llama-model.cpp): 5 local layers per global one
_GEMMA3_SLIDING_PATTERN = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 3 has four norms per layer: around attention and around the MLP
_GEMMA3_LAYER_NAMES = _LAYER_NAMES | {
    "attn_post_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


class GGUFModel:
    """A parsed GGUF file: metadata as Python values and the tensors, read lazily."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise ConversionError(f"GGUF file {self.path} does not exist.")
        try:
            self.reader = GGUFReader(str(self.path))
        except Exception as e:  # the reader raises ValueError / IndexError on bad bytes
            raise ConversionError(
                f"Cannot read {self.path} as GGUF ({type(e).__name__}: {e}); the file is "
                "truncated or not a GGUF file. Download it again."
            ) from e
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ConversionError(
                    f"{self.path} is truncated: tensor {t.name} ends at byte "
                    f"{t.data_offset + t.n_bytes}, the file has {size}. Download it again."
                )
        self.metadata: dict[str, Any] = {
            name: field.contents()
            for name, field in self.reader.fields.items()
            if not name.startswith("GGUF.")
        }
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        """Architecture-scoped metadata, e.g. get("block_count") -> llama.block_count."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ConversionError(
                f"{self.path} lacks the metadata key {self.architecture}.{key}; the file was "
                "written by an incompatible converter."
            )
        return value


def _check_supported(gg: GGUFModel) -> None:
    if gg.architecture not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"GGUF architecture {gg.architecture!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}. Convert the original Hugging Face "
            "checkpoint with `mlx-vgb convert --hf-path` instead."
        )
    from gguf import GGMLQuantizationType as T
    from gguf.quants import _type_traits

    for t in gg.tensors.values():
        kind = T(t.tensor_type)
        if (
            kind.name not in _KEPT
            and kind not in (T.F32, T.F16, T.BF16)
            and kind not in _type_traits
        ):
            raise ConversionError(
                f"Tensor {t.name} has GGML type {kind.name}, which is not supported (kept "
                f"quantized: {', '.join(_KEPT)}; dequantized: F32, F16, BF16 and the types "
                "the `gguf` package can dequantize). Use a GGUF with another quantization."
            )
    if "rope_freqs.weight" in gg.tensors:
        raise ConversionError(
            "The GGUF has a rope_freqs tensor (Llama 3.1-style rope scaling), which is not "
            "supported; convert the Hugging Face checkpoint with `mlx-vgb convert --hf-path`."
        )
    head_count_kv = gg.get("attention.head_count_kv")
    if isinstance(head_count_kv, list):
        raise ConversionError("Per-layer attention.head_count_kv is not supported.")


def _eos_ids(gg: GGUFModel) -> list[int]:
    """End-of-sequence ids: the file's eos and end-of-turn tokens (Gemma's <end_of_turn>)."""
    meta, ids = gg.metadata, []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        if (v := meta.get(f"tokenizer.ggml.{key}")) is not None and int(v) not in ids:
            ids.append(int(v))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if gg.architecture == "gemma3" and "<end_of_turn>" in tokens:
        if (i := tokens.index("<end_of_turn>")) not in ids:
            ids.append(i)
    return ids


def model_config(gg: GGUFModel) -> dict[str, Any]:
    """The mlx-lm config.json of a GGUF model (Hugging Face layout, rope_traditional False)."""
    _check_supported(gg)
    hidden = int(gg.require("embedding_length"))
    n_heads = int(gg.require("attention.head_count"))
    n_kv = int(gg.get("attention.head_count_kv", n_heads))
    head_dim = int(gg.get("attention.key_length", hidden // n_heads))
    n_layers = int(gg.require("block_count"))
    embed = gg.tensors["token_embd.weight"]
    vocab_size = int(gg.get("vocab_size") or embed.shape[-1])
    model_type, hf_class = _MODEL_TYPES[gg.architecture]
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_class],
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "intermediate_size": int(gg.require("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": float(gg.require("attention.layer_norm_rms_epsilon")),
        "vocab_size": vocab_size,
        "rope_theta": float(gg.get("rope.freq_base", 10000.0)),
        "rope_traditional": False,
        "tie_word_embeddings": "output.weight" not in gg.tensors,
    }
    if (ctx := gg.get("context_length")) is not None:
        config["max_position_embeddings"] = int(ctx)
    if gg.architecture == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in gg.tensors
        config["mlp_bias"] = "blk.0.ffn_up.bias" in gg.tensors
    if gg.architecture == "gemma3":
        config["sliding_window"] = int(gg.get("attention.sliding_window", 512))
        config["sliding_window_pattern"] = _GEMMA3_SLIDING_PATTERN
        config["rope_local_base_freq"] = _GEMMA3_LOCAL_ROPE_BASE
        # llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B (62 layers): 1/sqrt(hidden/heads)
        config["query_pre_attn_scalar"] = hidden // n_heads if n_layers == 62 else head_dim
    rope_type = gg.get("rope.scaling.type", "none")
    if rope_type == "linear":
        config["rope_scaling"] = {
            "type": "linear",
            "factor": float(gg.require("rope.scaling.factor")),
        }
    elif rope_type != "none":
        raise ConversionError(f"GGUF rope scaling {rope_type!r} is not supported (only linear).")
    if (v := gg.metadata.get("tokenizer.ggml.bos_token_id")) is not None:
        config["bos_token_id"] = int(v)
    if eos := _eos_ids(gg):
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return config


def _mlx_name(name: str, architecture: str) -> str:
    layer_names = _GEMMA3_LAYER_NAMES if architecture == "gemma3" else _LAYER_NAMES
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in layer_names:
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise ConversionError(
        f"GGUF tensor {name} has no counterpart in mlx-lm's {architecture} model; this "
        "variant of the architecture is not supported."
    )


def _repack(raw: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGML blocks (rows, n_blocks * block_bytes) -> MLX affine (weight uint32, scales, biases)."""
    _, block_bytes = _KEPT[kind]
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, block_bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    if kind == "Q8_0":
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        bias = d * np.float16(-128)
    else:
        start = 4 if kind == "Q4_1" else 2
        qs = blocks[..., start:]
        # GGML: byte j holds value j (low nibble) and value j + 16 (high nibble)
        v = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        # MLX: each byte holds values 2m (low nibble) and 2m + 1 (high nibble)
        q = (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)
        bias = (
            blocks[..., 2:4].copy().view(np.float16)[..., 0]
            if kind == "Q4_1"
            else d * np.float16(-8)
        )
    weight = np.ascontiguousarray(q.reshape(rows, -1)).view(np.uint32)
    return weight, d, bias


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rows of weight, scales, biases or bias)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_weights(
    gg: GGUFModel,
    dtype: str = DEFAULT_DTYPE,
    unpermute: bool = True,
    dequantize: bool = False,
    q_bits: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """mlx-lm weights of a GGUF model and the config's "quantization" entry (or {}).

    Q4_0 / Q4_1 / Q8_0 stay quantized; other matrices are dequantized and, with ``q_bits``,
    re-quantized by `mx.quantize`. ``dequantize``: every weight becomes ``dtype`` (MLX's CPU
    kernels for quantized weights run several tokens no faster than one at a time; BLAS matmuls
    do)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize as gguf_dequantize
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not supported; use one of {DTYPES}.")
    if q_bits is not None and q_bits not in Q_BITS:
        raise ConversionError(f"q_bits {q_bits} is not supported; use one of {Q_BITS}.")
    config = model_config(gg)
    mx_dtype = getattr(mx, dtype)
    permute_heads = {}
    if unpermute and gg.architecture == "llama":
        permute_heads = {
            "attn_q": config["num_attention_heads"],
            "attn_k": config["num_key_value_heads"],
        }
    if dequantize:
        q_bits = None

    weights: dict[str, mx.array] = {}
    bits_of: dict[str, int] = {}
    bar = tqdm(
        gg.tensors.items(),
        desc=f"converting {gg.path.name}",
        unit="tensor",
        disable=None if progress else True,
        leave=False,
    )
    for name, t in bar:
        key = _mlx_name(name, gg.architecture)
        module = key.rsplit(".", 1)[0]
        kind = T(t.tensor_type).name
        n_head = permute_heads.get(name.split(".")[2]) if name.startswith("blk.") else None

        def fix(a: np.ndarray, n_head=n_head) -> np.ndarray:
            # contiguous copies: MLX keeps numpy strides, and strided scales make qmm crawl
            return np.ascontiguousarray(_unpermute(a, n_head) if n_head else a)

        if kind in _KEPT and not dequantize:
            w, s, b = _repack(np.asarray(t.data), kind)
            weights[key] = mx.array(fix(w))
            weights[f"{module}.scales"] = mx.array(fix(s)).astype(mx_dtype)
            weights[f"{module}.biases"] = mx.array(fix(b)).astype(mx_dtype)
            bits_of[module] = _KEPT[kind][0]
            continue
        a = gguf_dequantize(np.asarray(t.data), T(t.tensor_type)).astype(np.float32)
        if gg.architecture == "gemma3" and name.endswith("norm.weight"):
            a = a - 1.0  # llama.cpp stores 1 + w; mlx-lm's Gemma RMSNorm adds the 1
        if a.ndim > 1 and q_bits is not None and a.shape[-1] % GROUP_SIZE == 0:
            w, s, b = mx.quantize(mx.array(fix(a)), group_size=GROUP_SIZE, bits=q_bits)
            weights[key] = w
            weights[f"{module}.scales"] = s.astype(mx_dtype)
            weights[f"{module}.biases"] = b.astype(mx_dtype)
            bits_of[module] = q_bits
        else:
            # norms and biases stay float32 (as llama.cpp keeps them): they make the
            # activations float32, and MLX's CPU kernels are far slower in float16
            weights[key] = mx.array(fix(a)).astype(mx_dtype if a.ndim > 1 else mx.float32)

    if config["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)
    quantization: dict[str, Any] = {}
    if bits_of:
        counts = {b: list(bits_of.values()).count(b) for b in set(bits_of.values())}
        default_bits = max(counts, key=counts.get)
        quantization = {"group_size": GROUP_SIZE, "bits": default_bits, "mode": "affine"}
        for module, bits in sorted(bits_of.items()):
            if bits != default_bits:
                quantization[module] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    return weights, quantization


def _write_tokenizer(gg: GGUFModel, out: Path, tokenizer_path: Path | None) -> None:
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        if not (tokenizer_path / "tokenizer.json").is_file():
            raise ConversionError(f"--tokenizer-path {tokenizer_path} has no tokenizer.json.")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_path / name).is_file():
                shutil.copy(tokenizer_path / name, out / name)
        return
    tok, config = build_tokenizer(gg)
    tok.save(str(out / "tokenizer.json"))
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def build_tokenizer(gg: GGUFModel):
    """`tokenizers.Tokenizer` and tokenizer_config.json contents from the GGUF's metadata."""
    return _build_tokenizer(gg.metadata, gg.path, gg.architecture)


def _save_weights(out: Path, weights: dict[str, mx.array]) -> None:
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    if len(shards) == 1:
        mx.save_safetensors(str(out / "model.safetensors"), shards[0], metadata={"format": "mlx"})
        return
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": {}}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / name), shard, metadata={"format": "mlx"})
        index["weight_map"].update({k: name for k in shard})
    with open(out / "model.safetensors.index.json", "w") as f:
        json.dump(index, f, indent=2)


def convert_gguf(
    gguf_path: str | Path,
    mlx_path: str | Path,
    dtype: str = DEFAULT_DTYPE,
    tokenizer_path: str | Path | None = None,
    force: bool = False,
    dequantize: bool = False,
    q_bits: int | None = DEFAULT_Q_BITS,
    progress: bool = True,
) -> Path:
    """Convert a GGUF file into an mlx-lm model folder at ``mlx_path``.

    ``q_bits``: re-quantize the tensors MLX cannot keep in their GGML format (None: cast them
    to ``dtype``). Written into a temp folder first and renamed at the end; an existing
    ``mlx_path`` is refused unless ``force``. Raises ConversionError naming anything
    unsupported, a lack of disk space, or an interruption (nothing is left behind).
    """
    check_output(mlx_path, force)
    gg = GGUFModel(gguf_path)
    config = model_config(gg)
    if tokenizer_path is None:
        build_tokenizer(gg)  # fail before the slow part
    weights, quantization = load_weights(
        gg, dtype=dtype, unpermute=True, dequantize=dequantize, q_bits=q_bits, progress=progress
    )
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    config["torch_dtype"] = dtype
    config["mlx_vgb"] = {"converted_from": os.path.basename(gg.path), "gguf_rope": "un-permuted"}

    out_dir = Path(mlx_path).absolute().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    need = sum(v.nbytes for v in weights.values()) + (64 << 20)  # + tokenizer, slack
    check_free_space(out_dir, need, f"the conversion of {gg.path.name} into {mlx_path}")
    with atomic_output(mlx_path, force) as out:
        _save_weights(out, weights)
        with open(out / "config.json", "w") as f:
            json.dump(dict(sorted(config.items())), f, indent=2)
        _write_tokenizer(gg, out, tokenizer_path)
    return Path(mlx_path)


def load_gguf(
    gguf_path: str | Path,
    dtype: str = DEFAULT_DTYPE,
    tokenizer_path: str | Path | None = None,
):
    """Build the mlx-lm model straight from a GGUF, keeping its q/k layout
    (``rope_traditional=True`` for llama). Returns (model, TokenizerWrapper) like mlx_lm.load.
    """
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    gg = GGUFModel(gguf_path)
    config = model_config(gg)
    weights, quantization = load_weights(gg, dtype=dtype, unpermute=False, q_bits=None)
    if gg.architecture == "llama":
        config["rope_traditional"] = True

    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = arch.Model(arch.ModelArgs.from_dict(config))
    if quantization:

        def predicate(path: str, module: nn.Module):
            if f"{path}.scales" not in weights:
                return False
            return quantization.get(path, {"group_size": GROUP_SIZE, "bits": quantization["bits"]})

        nn.quantize(
            model, group_size=GROUP_SIZE, bits=quantization["bits"], class_predicate=predicate
        )
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)  # e.g. Gemma 3 drops lm_head when tied
    model.load_weights(list(weights.items()))
    mx.eval(model.parameters())
    model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(gg, Path(tmp), tokenizer_path)
        tokenizer = load_tokenizer(Path(tmp), eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer
