"""Tiny random mlx-lm models for tests (no downloads), and the log-prob tolerance model."""

from mlx_vgb._blas import preload_openblas

# Before mlx is imported (test modules import this file before mlx_vgb): the parity tests run
# on the BLAS the package itself loads, whatever order pytest collects the files in.
preload_openblas()

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_map  # noqa: E402
from mlx_lm.models import llama  # noqa: E402


def tiny_llama(
    seed: int = 0,
    vocab: int = 48,
    hidden: int = 32,
    layers: int = 2,
    tie: bool = True,
    context: int = 512,
) -> llama.Model:
    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=context,
    )
    model = llama.Model(args)
    # larger weights than the default init so next-token laws are far from uniform
    model.update(
        __import__("mlx.utils", fromlist=["tree_map"]).tree_map(
            lambda p: p * 3.0, model.parameters()
        )
    )
    mx.eval(model.parameters())
    return model


def full_forward_logprobs(model, tokens) -> np.ndarray:
    """Log-probs after ``tokens`` from a fresh, cache-free forward of the whole sequence."""
    logits = model(mx.array([list(tokens)]))[0, -1].astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits))


def logprob_error(got, want) -> float:
    """Largest error between two log-prob arrays, relative to 1 + |log-prob|.

    float32 round-off is relative: a log-prob of -40 carries ~40x the absolute error of one near
    0 (CI measured 2.1e-4 absolute at -41, i.e. 5e-6 relative), so absolute tolerances flake."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / (1.0 + np.abs(want))))


# The tolerance model. Two float32 computations of the same log-probs (a cached and a fresh
# forward; a batch of rows and one row at a time) differ by round-off only; with OpenBLAS,
# batched and single-row matmuls also sum in different orders. Scale: the float32 error of
# the compared sequences, i.e. the largest logprob_error of this model's float32 forward
# against the same forward in float64 over every position of those sequences (float32_error).
# Measured (tiny_llama seeds 1 and 4, OpenBLAS, 120 groups of 4 rows): parity error / scale
# <= 3.7, scale 7e-6 .. 1e-4; with MLX's reference BLAS parity is exactly 0. Tolerance:
# LOGPROB_MARGIN x scale (2x headroom over the worst ratio seen), never below LOGPROB_TOL:
# where the scale is small the ratio is not bounded -- CI measured a batched-vs-single error
# of 6.1e-5 against a scale of 5.7e-6 (ratio 10.8; OpenBLAS's batched kernels round the
# cached path's sums differently from the full forward the scale measures). A wrong cache
# row (another token, a position off by one) is off by > 0.5 on these models, >= 600x the
# floor; tolerances above WRONG_ROW / 10 are refused, so a wrong row always fails.
LOGPROB_MARGIN = 8.0
WRONG_ROW = 1e-2
# The largest float32_error seen on the tiny test models (random sequences up to 14 tokens,
# with or without OpenBLAS; test_lm_cache checks it still holds): the scale for tests that
# compare arbitrary sequences (test_properties) and do not measure their own.
TINY_FLOAT32_ERROR = 1e-4
LOGPROB_TOL = LOGPROB_MARGIN * TINY_FLOAT32_ERROR  # 8e-4, 12x below WRONG_ROW

_float64_copies: dict = {}


def float64_copy(model):
    """The same model with float64 weights (MLX computes float64 on the CPU only)."""
    key = id(model)
    if key not in _float64_copies:
        import copy

        m64 = copy.deepcopy(model)
        m64.update(tree_map(lambda p: p.astype(mx.float64), model.parameters()))
        _float64_copies[key] = (model, m64)  # holding `model` keeps its id unique
    return _float64_copies[key][1]


def float32_error(model, sequences) -> float:
    """Largest logprob_error of the float32 forward against the float64 forward, over every
    position of every sequence: the round-off scale of this model on these tokens."""
    m64 = float64_copy(model)
    worst = 0.0
    for seq in sequences:
        x = mx.array([list(seq)])
        lo = model(x)[0].astype(mx.float32)
        lo = lo - mx.logsumexp(lo, axis=-1, keepdims=True)
        with mx.stream(mx.cpu):
            hi = m64(x)[0]
            hi = hi - mx.logsumexp(hi, axis=-1, keepdims=True)
        worst = max(worst, logprob_error(np.array(lo), np.array(hi)))
    return worst


def logprob_tolerance(model, sequences, margin: float = LOGPROB_MARGIN) -> float:
    """Tolerance for comparing two float32 computations of the log-probs after `sequences`."""
    tol = margin * float32_error(model, sequences)
    assert tol <= WRONG_ROW / 10, (
        f"tolerance {tol:.2g} from the error model is too loose to catch a wrong cache row"
    )
    return max(tol, LOGPROB_TOL)  # the floor: see the tolerance model above


def tiny_model_folder(path, seed: int = 0, hidden: int = 32, layers: int = 2, context: int = 512):
    """Write a tiny random llama + byte-level tokenizer as an mlx-lm folder; return its path.

    Vocabulary: 256 byte tokens + <|im_start|>, <|im_end|> (EOS), a ChatML chat template."""
    import json
    from pathlib import Path

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # sorted: alphabet() comes from a hash set, in a different order in every process
    byte_vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    assert len(byte_vocab) == 256
    tok = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(path / "tokenizer.json"))
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% endif %}"
    )
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "bos_token": None,
                "chat_template": template,
            }
        )
    )
    model = tiny_llama(seed=seed, vocab=258, hidden=hidden, layers=layers, context=context)
    cfg = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * hidden,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 258,
        "tie_word_embeddings": True,
        "max_position_embeddings": context,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return path


def even_token_verifier():
    """V^ in (0, 1] that prefers even tokens, so walks on a tiny model backtrack."""
    from mlx_vgb import FunctionVerifier

    return FunctionVerifier(lambda y: 0.2 + 0.8 * (sum(t % 2 == 0 for t in y) + 1) / (len(y) + 1))
