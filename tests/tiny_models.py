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


def logprob_error(got, want) -> float:
    """Largest error between two log-prob arrays, relative to 1 + |log-prob|.

    float32 round-off is relative: a log-prob of -40 carries ~40x the absolute error of one near
    0 (CI measured 2.1e-4 absolute at -41, i.e. 5e-6 relative), so absolute tolerances flake."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / (1.0 + np.abs(want))))


LOGPROB_TOL = 5e-5  # ~400 float32 ulps relative; a wrong cache row is off by >1e-2


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
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% endif %}")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
        "bos_token": None, "chat_template": template}))
    model = tiny_llama(seed=seed, vocab=258, hidden=hidden, layers=layers, context=context)
    cfg = {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
           "intermediate_size": 2 * hidden, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rms_norm_eps": 1e-5, "vocab_size": 258, "tie_word_embeddings": True,
           "max_position_embeddings": context}
    (path / "config.json").write_text(json.dumps(cfg))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return path
