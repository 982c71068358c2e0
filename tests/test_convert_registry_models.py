"""The registry's real models (slow: `pytest -m slow`; pulls them into the cache once):
greedy decoding of each converted folder agrees token for token with the numpy reference
(tiny_gguf.Reference) run on weights dequantized straight from the GGUF by gguf-py, for the
first 16 tokens of several prompts, and the log-probs agree within
|dlog p| <= LOGPROB_RTOL * (1 + |log p|) (float32 against float64)."""

import mlx.core as mx
import numpy as np
import pytest
from tiny_gguf import Dims, Reference, log_softmax, mlx_greedy, unpermute

pytestmark = pytest.mark.slow

PROMPTS = (
    "What is the capital of France?",
    "Write is_prime(n) in Python.",
    "List three colours.",
)
LOGPROB_RTOL = 2e-3
_LAYER = {
    "attn_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}


def reference_weights(path):
    """HF-layout float32 weights, read and dequantized from the GGUF without the converter."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    arch = meta["general.architecture"]
    get = lambda k: meta[f"{arch}.{k}"]  # noqa: E731
    heads, kv = get("attention.head_count"), get("attention.head_count_kv")
    d = Dims(
        hidden=get("embedding_length"),
        heads=heads,
        kv_heads=kv,
        head_dim=get("embedding_length") // heads,
        ffn=get("feed_forward_length"),
        layers=get("block_count"),
    )
    hf = {"arch": arch, "dims": d, **{i: {} for i in range(d.layers)}}
    for t in r.tensors:
        a = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        parts = t.name.split(".")
        if parts[0] == "blk":
            i, kind, suffix = int(parts[1]), parts[2], parts[3]
            if arch == "llama" and kind in ("attn_q", "attn_k"):  # llama.cpp's rope permutation
                a = unpermute(a, heads if kind == "attn_q" else kv)
            name = _LAYER[kind] if suffix == "weight" else f"{kind[-1]}_bias"
            hf[i][name] = a
        else:
            hf[{"token_embd": "embed", "output_norm": "norm", "output": "lm_head"}[parts[0]]] = a
    return hf, float(get("rope.freq_base")), float(get("attention.layer_norm_rms_epsilon"))


@pytest.fixture(scope="module", params=["smollm2-135m", "qwen2.5-coder-0.5b"])
def pulled(request):
    import mlx_lm

    from mlx_vgb import models

    name = request.param
    folder = models.pull(name, variant="float32")
    model, tok = mlx_lm.load(str(folder))
    hf, theta, eps = reference_weights(models.gguf_path(models.REGISTRY[name]))
    return name, model, tok, hf, theta, eps


def _chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def test_greedy_decoding_matches_the_numpy_reference_token_for_token(pulled):
    name, model, tok, hf, theta, eps = pulled
    for text in PROMPTS:
        prompt = _chat(tok, text)
        toks, lps = mlx_greedy(model, prompt, 16)
        ref = Reference(hf, theta, eps)
        logits, ref_toks, ref_lps = ref(prompt)[-1], [], []
        for _ in range(16):
            lp = log_softmax(logits)
            ref_toks.append(int(np.argmax(lp)))
            ref_lps.append(float(lp[ref_toks[-1]]))
            logits = ref([ref_toks[-1]])[-1]
        assert toks == ref_toks, (name, text, tok.decode(toks), tok.decode(ref_toks))
        err = np.abs(np.array(lps) - ref_lps) / (1 + np.abs(ref_lps))
        assert err.max() < LOGPROB_RTOL, (name, text, err.max())
    answer = tok.decode(mlx_greedy(model, _chat(tok, PROMPTS[0]), 16)[0])
    assert "Paris" in answer, answer


def test_value_head_reads_the_real_models_hidden_states(pulled):
    from mlx_vgb.lm import MLXLanguageModel
    from mlx_vgb.verifier_format import HeadConfig, ValueHead

    name, model, tok, hf, theta, eps = pulled
    assert hasattr(model, "lm_head") is ("lm_head" in hf)  # Qwen2.5-Coder: untied output
    mx.random.seed(0)
    head = ValueHead(HeadConfig(dims=[hf["dims"].hidden, 16, 1]))
    lm = MLXLanguageModel(model, tok, value_head=head)
    prompt = _chat(tok, PROMPTS[1])
    lm.begin(prompt)
    v = lm.values([()])[0]
    h = Reference(hf, theta, eps)(prompt, hidden=True)[-1]
    w1, b1, w2, b2 = (np.array(p) for L in head.layers for p in (L.weight, L.bias))
    expected = 1 / (1 + np.exp(-(np.maximum(h @ w1.T + b1, 0) @ w2.T + b2)[0]))
    assert abs(v - expected) < 1e-4, (name, v, expected)


TEXTS = (
    "Write is_prime(n) in Python.",
    "  def f(x):\n\treturn x**2  # 12345 héllo 😀\n\n",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
)


def test_qwen_tokenizer_agrees_with_transformers_gguf_reader(pulled):
    """An independent reading of the same metadata (transformers' GGUF tokenizer builder;
    SmolLM2's 'smollm' pre-tokenizer is not in its table, so only Qwen is compared)."""
    from mlx_vgb import models

    name, _, tok, *_ = pulled
    if name != "qwen2.5-coder-0.5b":
        pytest.skip("transformers has no 'smollm' pre-tokenizer")
    from gguf import GGUFReader

    hf_gguf = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    r = GGUFReader(str(models.gguf_path(models.REGISTRY[name])))
    meta = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.ggml.")}
    renames = hf_gguf.GGUF_TOKENIZER_MAPPING["tokenizer"]  # its reader needs torch; not its builder
    tdict = {v: meta[f"tokenizer.{k}"] for k, v in renames.items() if f"tokenizer.{k}" in meta}
    backend, _ = hf_gguf.convert_gguf_tokenizer("qwen2", tdict)
    for text in TEXTS:
        ours = tok.encode(text, add_special_tokens=False)
        assert ours == backend.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ours) == text
    assert tok.encode("<|im_start|>", add_special_tokens=False) == [151644]
