"""Tiny random mlx-lm models for tests (no downloads)."""

import mlx.core as mx
import numpy as np
from mlx_lm.models import llama


def tiny_llama(seed: int = 0, vocab: int = 48, hidden: int = 32, layers: int = 2,
               tie: bool = True, context: int = 512) -> llama.Model:
    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-5, vocab_size=vocab, tie_word_embeddings=tie,
        max_position_embeddings=context,
    )
    model = llama.Model(args)
    # larger weights than the default init so next-token laws are far from uniform
    model.update(__import__("mlx.utils", fromlist=["tree_map"]).tree_map(
        lambda p: p * 3.0, model.parameters()))
    mx.eval(model.parameters())
    return model


def full_forward_logprobs(model, tokens) -> np.ndarray:
    """Log-probs after ``tokens`` from a fresh, cache-free forward of the whole sequence."""
    logits = model(mx.array([list(tokens)]))[0, -1].astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits))
