"""GGUF tokenizer metadata -> `tokenizers.Tokenizer` + tokenizer_config.json.

Two vocabularies, as llama.cpp names them in ``tokenizer.ggml.model``:

- ``gpt2``: byte-level BPE (SmolLM2, Llama 3, Qwen2/3): tokens and merges from the file, the
  pre-tokenizer regex chosen by ``tokenizer.ggml.pre`` (regexes from llama.cpp's llama-vocab.cpp).
- ``llama``: SentencePiece BPE (Llama 2, Gemma): "▁" for spaces, byte fallback (<0xNN> tokens),
  merges recovered from the vocabulary (the file has none): every split of a token into two
  tokens, best first -- by score, or for Gemma by position in the file, whose scores do not follow
  the merge order (as transformers' GGUF loader does).

Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
tokens: both are matched whole, so a chat template's ``<|im_start|>`` encodes as one id.
"""

from typing import Any

from .output import ConversionError

_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp `tokenizer.ggml.pre` -> pre-tokenizer
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
    "deepseek-r1-qwen": _QWEN2_REGEX,
}
# SentencePiece vocabularies whose merge order is the file order, not the scores
_ORDER_BY_POSITION = ("gemma", "gemma2", "gemma3")
_SPACE = "\u2581"


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


def _byte_level_bpe(meta: dict[str, Any], tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, processors

    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    return tok, processors.ByteLevel(trim_offsets=False)


def spm_merges(tokens: list[str], priority: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: each token's splits into two tokens,
    ordered by the token's priority (higher first), then by the pieces' ids."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for t, p in zip(tokens, priority):
        local = [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found += [(-p, len(a), len(b), a, b) for a, b in local]
    found.sort(key=lambda m: m[:3])  # stable: ties keep the id order
    return [(a, b) for *_, a, b in found]


def _sentencepiece_bpe(meta: dict[str, Any], tokens: list[str], architecture: str):
    from tokenizers import Tokenizer, decoders, models, normalizers

    # Gemma stores tokens of several spaces as real spaces; the normalizer writes "▁"
    tokens = [_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
    if architecture in _ORDER_BY_POSITION:
        priority = [-float(i) for i in range(len(tokens))]
    else:
        priority = [float(s) for s in meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = _token(meta, tokens, "unknown")
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=spm_merges(tokens, priority),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    replace = normalizers.Replace(" ", _SPACE)
    decode = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", architecture not in _ORDER_BY_POSITION):
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), replace])
        decode.append(decoders.Strip(" ", 1, 0))
    else:
        tok.normalizer = replace
    tok.decoder = decoders.Sequence(decode)
    return tok, None


def build_tokenizer(meta: dict[str, Any], path: Any, architecture: str):
    """`tokenizers.Tokenizer` and tokenizer_config.json contents from GGUF metadata."""
    from tokenizers import AddedToken, processors

    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ConversionError(
            f"{path} has no tokenizer in its metadata (tokenizer.ggml.tokens); pass "
            "--tokenizer-path with a folder holding the model's tokenizer.json."
        )
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tok, base = _byte_level_bpe(meta, tokens)
    elif kind == "llama":
        tok, base = _sentencepiece_bpe(meta, tokens, architecture)
    else:
        raise ConversionError(
            f"GGUF tokenizer model {kind!r} in {path} is not supported (byte-level BPE 'gpt2' "
            "and SentencePiece 'llama' are); pass --tokenizer-path with the model's Hugging "
            "Face tokenizer.json."
        )

    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    tok.add_tokens(
        [
            AddedToken(tokens[i], special=types[i] == _TOKEN_TYPE_CONTROL, normalized=False)
            for i in range(len(tokens))
            if types[i] in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
        ]
    )

    bos = _token(meta, tokens, "bos")
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    add_bos = bool(add_bos) and bos is not None
    steps = [base] if base is not None else []
    if add_bos:
        steps.append(
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, tokens.index(bos))],
            )
        )
    if steps:
        tok.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    for key in ("bos", "eos", "unknown", "padding"):
        if (t := _token(meta, tokens, key)) is not None:
            config[{"unknown": "unk", "padding": "pad"}.get(key, key) + "_token"] = t
    if (ctx := meta.get(f"{architecture}.context_length")) is not None:
        config["model_max_length"] = int(ctx)
    if (template := meta.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    return tok, config
