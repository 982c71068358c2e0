"""GGUF -> MLX model folder that `mlx_lm.load` reads (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with the chat template).

Weights: Q4_0, Q4_1 and Q8_0 stay quantized, repacked into MLX's affine format with group
size 32 (bit-exact with what `mx.load` makes of them, float16 scales and biases); F32/F16/BF16 and
the other GGML types (K-quants, IQ, Q5_*) are dequantized with the `gguf` package and cast to
``dtype`` (float16 by default). One-dimensional tensors (norms, biases) stay float32, as in
the GGUF: they keep the activations in float32, which MLX computes much faster on CPU
(quantized matmul measured ~70x faster than with float16 activations).

Rotary embeddings: for the "llama" architecture llama.cpp stores the q/k projection rows
permuted so that rotary pairs are adjacent (GPT-J / "traditional" layout). The converter
undoes that permutation (row-wise, so it works on quantized rows as well) and writes
``rope_traditional: false``: the folder has the Hugging Face layout, like any mlx-lm llama.
`load_gguf` instead keeps the GGUF layout and runs it with ``rope_traditional=True``; the
two agree, which the tests check. Qwen2 GGUFs are not permuted (NEOX rope).

The tokenizer is rebuilt from the GGUF metadata with `tokenizers` (byte-level BPE models:
tokens, merges, pre-tokenizer regex from ``tokenizer.ggml.pre``).
"""

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn

from .output import ConversionError, atomic_output, check_output

GROUP_SIZE = 32
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
DEFAULT_DTYPE = "float16"
DTYPES = ("float16", "bfloat16", "float32")

# GGML block layouts kept quantized: name -> (bits, bytes per block of 32)
_KEPT = {"Q4_0": (4, 18), "Q4_1": (4, 20), "Q8_0": (8, 34)}
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp `tokenizer.ggml.pre` -> pre-tokenizer (regexes from llama.cpp's llama-vocab.cpp)
_GPT2_PRE = ("default", "gpt2")
_DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r")
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_PRE = {
    "llama-bpe": _LLAMA3_REGEX,
    "llama3": _LLAMA3_REGEX,
    "smaug-bpe": _LLAMA3_REGEX,
    "qwen2": _QWEN2_REGEX,
}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
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


def model_config(gg: GGUFModel) -> dict[str, Any]:
    """The mlx-lm config.json of a GGUF model (Hugging Face layout, rope_traditional False)."""
    _check_supported(gg)
    hidden = int(gg.require("embedding_length"))
    n_heads = int(gg.require("attention.head_count"))
    n_kv = int(gg.get("attention.head_count_kv", n_heads))
    head_dim = int(gg.get("attention.key_length", hidden // n_heads))
    embed = gg.tensors["token_embd.weight"]
    vocab_size = int(gg.get("vocab_size") or embed.shape[-1])
    config: dict[str, Any] = {
        "model_type": gg.architecture,
        "architectures": [
            {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[gg.architecture]
        ],
        "hidden_size": hidden,
        "num_hidden_layers": int(gg.require("block_count")),
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
    rope_type = gg.get("rope.scaling.type", "none")
    if rope_type == "linear":
        config["rope_scaling"] = {
            "type": "linear",
            "factor": float(gg.require("rope.scaling.factor")),
        }
    elif rope_type != "none":
        raise ConversionError(f"GGUF rope scaling {rope_type!r} is not supported (only linear).")
    for key in ("bos_token_id", "eos_token_id"):
        if (v := gg.metadata.get(f"tokenizer.ggml.{key}")) is not None:
            config[key] = int(v)
    return config


def _mlx_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise ConversionError(f"GGUF tensor {name} has no mlx-lm counterpart; it is not supported.")


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
    gg: GGUFModel, dtype: str = DEFAULT_DTYPE, unpermute: bool = True, dequantize: bool = False
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """mlx-lm weights of a GGUF model and the config's "quantization" entry (or {}).
    ``dequantize``: Q4_0 / Q4_1 / Q8_0 too become ``dtype`` (MLX's CPU kernels for quantized
    weights run several tokens no faster than one at a time; BLAS matmuls do)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize as gguf_dequantize

    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not supported; use one of {DTYPES}.")
    config = model_config(gg)
    mx_dtype = getattr(mx, dtype)
    permute_heads = {}
    if unpermute and gg.architecture == "llama":
        permute_heads = {
            "attn_q": config["num_attention_heads"],
            "attn_k": config["num_key_value_heads"],
        }

    weights: dict[str, mx.array] = {}
    bits_of: dict[str, int] = {}
    for name, t in gg.tensors.items():
        key = _mlx_name(name)
        kind = T(t.tensor_type).name
        n_head = permute_heads.get(name.split(".")[2]) if name.startswith("blk.") else None

        def fix(a: np.ndarray, n_head=n_head) -> np.ndarray:
            # contiguous copies: MLX keeps numpy strides, and strided scales make qmm crawl
            return np.ascontiguousarray(_unpermute(a, n_head) if n_head else a)

        if kind in _KEPT and not dequantize:
            w, s, b = _repack(np.asarray(t.data), kind)
            module = key.rsplit(".", 1)[0]
            weights[key] = mx.array(fix(w))
            weights[f"{module}.scales"] = mx.array(fix(s)).astype(mx_dtype)
            weights[f"{module}.biases"] = mx.array(fix(b)).astype(mx_dtype)
            bits_of[module] = _KEPT[kind][0]
        else:
            a = gguf_dequantize(np.asarray(t.data), T(t.tensor_type)).astype(np.float32)
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


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    if pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_PRE[pre]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    supported = ", ".join(_GPT2_PRE + _DIGITS_PRE + tuple(_SPLIT_PRE))
    raise ConversionError(
        f"GGUF pre-tokenizer {pre!r} is not supported (supported: {supported}); pass "
        "--tokenizer-path with the model's Hugging Face tokenizer.json."
    )


def _token(meta: dict[str, Any], tokens: list[str], key: str) -> str | None:
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None


def build_tokenizer(gg: GGUFModel):
    """`tokenizers.Tokenizer` and tokenizer_config.json contents from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    meta = gg.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ConversionError(
            f"{gg.path} has no tokenizer in its metadata (tokenizer.ggml.tokens); pass "
            "--tokenizer-path with a folder holding the model's tokenizer.json."
        )
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConversionError(
            f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); "
            "pass --tokenizer-path with the model's Hugging Face tokenizer.json."
        )
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()

    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    added = [
        AddedToken(tokens[i], special=types[i] == _TOKEN_TYPE_CONTROL, normalized=False)
        for i in range(len(tokens))
        if types[i] in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
    ]
    tok.add_tokens(added)

    bos = _token(meta, tokens, "bos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    byte_level = processors.ByteLevel(trim_offsets=False)
    if add_bos:
        bos_id = vocab[bos]
        tok.post_processor = processors.Sequence(
            [
                byte_level,
                processors.TemplateProcessing(
                    single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
                ),
            ]
        )
    else:
        tok.post_processor = byte_level

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    for key in ("bos", "eos", "unknown", "padding"):
        if (t := _token(meta, tokens, key)) is not None:
            config[{"unknown": "unk", "padding": "pad"}.get(key, key) + "_token"] = t
    if (ctx := gg.get("context_length")) is not None:
        config["model_max_length"] = int(ctx)
    if (template := meta.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    return tok, config


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
) -> Path:
    """Convert a GGUF file into an mlx-lm model folder at ``mlx_path``.

    Written into a temp folder first and renamed at the end; an existing ``mlx_path`` is
    refused unless ``force``. Raises ConversionError naming anything unsupported.
    """
    check_output(mlx_path, force)
    gg = GGUFModel(gguf_path)
    config = model_config(gg)
    if tokenizer_path is None:
        build_tokenizer(gg)  # fail before the slow part
    weights, quantization = load_weights(gg, dtype=dtype, unpermute=True, dequantize=dequantize)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    config["torch_dtype"] = dtype
    config["mlx_vgb"] = {"converted_from": os.path.basename(gg.path), "gguf_rope": "un-permuted"}

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
    weights, quantization = load_weights(gg, dtype=dtype, unpermute=False)
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
    model.load_weights(list(weights.items()))
    mx.eval(model.parameters())
    model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(gg, Path(tmp), tokenizer_path)
        tokenizer = load_tokenizer(Path(tmp), eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer
