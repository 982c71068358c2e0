"""Tiny GGUFs written with gguf-py, and an independent numpy forward of the architectures
(llama, qwen2, qwen3, gemma3) in Hugging Face layout, float64, with a KV cache.

Quantized tensors: `gguf.quants.quantize` where gguf-py implements it (F16, BF16, Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0); for the K-quants (Q2_K..Q6_K) random blocks with sane float16 scales are
written raw. Either way the truth is what gguf-py dequantizes from the file's bytes.
"""

from dataclasses import dataclass

import gguf
import numpy as np
from gguf.quants import dequantize, quantize

T = gguf.GGMLQuantizationType
EPS, THETA = 1e-5, 10000.0
GEMMA_LOCAL_THETA = 10000.0  # llama.cpp's fixed base of Gemma 3's sliding-window layers
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
QUANTIZABLE = (T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)
# K-quant block: bytes, and (offset, value) of its float16 scale fields (d, dmin)
K_BLOCKS = {
    T.Q2_K: (84, ((80, 4e-3), (82, 4e-3))),
    T.Q3_K: (110, ((108, 1e-3),)),
    T.Q4_K: (144, ((0, 2e-4), (2, 1e-3))),
    T.Q5_K: (176, ((0, 1e-4), (2, 1e-3))),
    T.Q6_K: (210, ((208, 5e-5),)),
}


@dataclass(frozen=True)
class Dims:
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    ffn: int = 128
    layers: int = 2


SMALL = Dims()
WIDE = Dims(hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=256)  # rows of 256 for K-quants
GEMMA = Dims(layers=6)  # layer 5 is Gemma 3's first global-attention layer


def byte_alphabet() -> list[str]:
    # GPT-2's bytes_to_unicode: the 256 symbols byte-level BPE works on
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def bpe_vocab():
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens = SPECIALS + byte_alphabet() + [m.replace(" ", "") for m in merges]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


SPM_PIECES = ["▁", "t", "h", "e", "i", "n", "a", "c", "he", "▁t", "in", "▁tin", "the", "▁a"]


def spm_vocab():
    """A Gemma-like SentencePiece vocabulary: no merges, byte-fallback tokens, and a token of two
    spaces spelled with real spaces, as Gemma GGUFs store them."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    types = [3, 3, 3, 2, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    tokens += SPM_PIECES + ["  "]
    types += [1] * (len(SPM_PIECES) + 1)
    scores = [0.0] * len(tokens)  # Gemma's scores do not give the merge order
    return tokens, types, scores


def _permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute(w, n_head):
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_weights(rng, vocab, arch="llama", tied=True, dims=SMALL):
    """Random weights in Hugging Face layout (norm weights as the model multiplies them, i.e.
    Gemma's w of (1 + w))."""
    d, s = dims, 0.2
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    norm = (lambda n: 0.1 * r(n)) if arch == "gemma3" else (lambda n: 1 + 0.1 * r(n))
    w = {"arch": arch, "dims": d, "embed": r(vocab, d.hidden) * 0.5, "norm": norm(d.hidden)}
    if not tied:
        w["lm_head"] = r(vocab, d.hidden) * 0.2
    for i in range(d.layers):
        L = {
            "q": r(d.heads * d.head_dim, d.hidden) * s,
            "k": r(d.kv_heads * d.head_dim, d.hidden) * s,
            "v": r(d.kv_heads * d.head_dim, d.hidden) * s,
            "o": r(d.hidden, d.heads * d.head_dim) * s,
            "gate": r(d.ffn, d.hidden) * s,
            "up": r(d.ffn, d.hidden) * s,
            "down": r(d.hidden, d.ffn) * s,
            "attn_norm": norm(d.hidden),
            "ffn_norm": norm(d.hidden),
        }
        if arch == "qwen2":
            for b, n in (("q_bias", d.heads), ("k_bias", d.kv_heads), ("v_bias", d.kv_heads)):
                L[b] = r(n * d.head_dim) * 0.1
        if arch in ("qwen3", "gemma3"):
            L["q_norm"], L["k_norm"] = norm(d.head_dim), norm(d.head_dim)
        if arch == "gemma3":
            L["post_attn_norm"], L["post_ffw_norm"] = norm(d.hidden), norm(d.hidden)
        w[i] = L
    return w


def k_quant_blocks(rng, shape, kind):
    """Random raw blocks of a K-quant for a (rows, cols) matrix, scales set to sane values."""
    block_bytes, fields = K_BLOCKS[kind]
    rows, cols = shape
    raw = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    for offset, value in fields:
        raw[..., offset : offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


def write_gguf(
    path,
    arch="llama",
    qtype=T.F32,
    tied=True,
    tokenizer=True,
    seed=0,
    extra_tensor=None,
    dims=None,
    embed_qtype=None,
    pre="smollm",
):
    """Write a tiny GGUF; return the Hugging Face layout weights it holds (dequantized)."""
    rng = np.random.default_rng(seed)
    dims = dims or (GEMMA if arch == "gemma3" else WIDE if qtype in K_BLOCKS else SMALL)
    spm = arch == "gemma3"
    tokens, types, extra = spm_vocab() if spm else bpe_vocab()
    hf = hf_weights(rng, len(tokens), arch, tied, dims)
    theta = 1e6 if arch == "gemma3" else THETA
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(dims.layers)
    w.add_context_length(256)
    w.add_embedding_length(dims.hidden)
    w.add_feed_forward_length(dims.ffn)
    w.add_head_count(dims.heads)
    w.add_head_count_kv(dims.kv_heads)
    w.add_key_length(dims.head_dim)
    w.add_value_length(dims.head_dim)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(theta)
    w.add_vocab_size(len(tokens))
    if arch == "gemma3":
        w.add_sliding_window(128)
    if tokenizer:
        w.add_token_list(tokens)
        w.add_token_types(types)
        if spm:
            w.add_tokenizer_model("llama")
            w.add_token_scores(extra)
            w.add_bos_token_id(2)
            w.add_eos_token_id(1)
            w.add_unk_token_id(3)
            w.add_pad_token_id(0)
            w.add_add_bos_token(True)
            w.add_add_space_prefix(False)
            w.add_chat_template(GEMMA_TEMPLATE)
        else:
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(pre)
            w.add_token_merges(extra)
            w.add_bos_token_id(1)
            w.add_eos_token_id(2)
            w.add_chat_template(CHAT_TEMPLATE)

    def add(name, a, kind=qtype):
        if a.ndim == 1 or kind == T.F32:
            w.add_tensor(name, a.astype(np.float32))
            return a
        if kind in K_BLOCKS:
            q = k_quant_blocks(rng, a.shape, kind)
        else:
            q = quantize(a, kind)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
        return dequantize(q, kind).astype(np.float32)  # what the file really holds

    # GGUFs keep norms in float32; Gemma's as 1 + w (llama.cpp's norm_shift)
    shift = 1.0 if arch == "gemma3" else 0.0
    if embed_qtype is None:
        embed_qtype = T.Q8_0 if qtype in (T.Q4_0, T.Q4_1) else qtype
    hf["embed"] = add("token_embd.weight", hf["embed"], embed_qtype)
    add("output_norm.weight", hf["norm"] + shift)
    if not tied:
        hf["lm_head"] = add("output.weight", hf["lm_head"])
    permute = arch == "llama"
    for i in range(dims.layers):
        L = hf[i]
        for hf_name, gg_name, n in (("q", "attn_q", dims.heads), ("k", "attn_k", dims.kv_heads)):
            stored = _permute(L[hf_name], n) if permute else L[hf_name]
            back = add(f"blk.{i}.{gg_name}.weight", stored)
            # undo the permutation on what the file holds to get the HF-layout truth
            L[hf_name] = unpermute(back, n) if permute else back
        for hf_name, gg_name in (
            ("v", "attn_v"),
            ("o", "attn_output"),
            ("gate", "ffn_gate"),
            ("up", "ffn_up"),
            ("down", "ffn_down"),
        ):
            L[hf_name] = add(f"blk.{i}.{gg_name}.weight", L[hf_name])
        for hf_name, gg_name in (
            ("attn_norm", "attn_norm"),
            ("ffn_norm", "ffn_norm"),
            ("q_norm", "attn_q_norm"),
            ("k_norm", "attn_k_norm"),
            ("post_attn_norm", "attn_post_norm"),
            ("post_ffw_norm", "post_ffw_norm"),
        ):
            if hf_name in L:
                add(f"blk.{i}.{gg_name}.weight", L[hf_name] + shift)
        for b in ("q_bias", "k_bias", "v_bias"):
            if b in L:
                add(f"blk.{i}.attn_{b[0]}.bias", L[b])
    if extra_tensor is not None:
        name, raw, kind = extra_tensor
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


# ---------------------------------------------------------------------------------------------
# numpy reference


class Reference:
    """Incremental numpy forward (float64) of a decoder in Hugging Face layout.

    ``hf``: weights as `hf_weights` returns them, plus "arch" and "dims"; ``theta`` the rope
    base (Gemma 3: of its global layers; its sliding-window layers use 10000).
    """

    def __init__(self, hf, theta=THETA, eps=EPS):
        self.hf, self.arch, self.d = hf, hf.get("arch", "llama"), hf.get("dims", SMALL)
        self.theta, self.eps = theta, eps
        self.cache = [None] * self.d.layers
        self.pos = 0

    def _rms(self, x, g):
        g = 1 + g if self.arch == "gemma3" else g
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * g

    def _rope(self, x, base, start):  # (heads, L, head_dim), rotate-half
        hd = x.shape[-1]
        pos = np.arange(start, start + x.shape[1])[:, None]
        ang = pos * (base ** (-np.arange(0, hd, 2) / hd))[None]
        cos, sin = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def __call__(self, ids, hidden=False):
        """Logits (or final normed hidden states) of the new tokens ``ids``."""
        hf, d, gemma = self.hf, self.d, self.arch == "gemma3"
        n, start = len(ids), self.pos
        h = hf["embed"][ids].astype(np.float64)
        if gemma:
            h = h * np.sqrt(d.hidden)
        for i in range(d.layers):
            L = hf[i]
            x = self._rms(h, L["attn_norm"])
            q = x @ L["q"].T + L.get("q_bias", 0)
            k = x @ L["k"].T + L.get("k_bias", 0)
            v = x @ L["v"].T + L.get("v_bias", 0)
            q = q.reshape(n, d.heads, d.head_dim).transpose(1, 0, 2)
            k = k.reshape(n, d.kv_heads, d.head_dim).transpose(1, 0, 2)
            v = v.reshape(n, d.kv_heads, d.head_dim).transpose(1, 0, 2)
            if "q_norm" in L:
                q, k = self._rms(q, L["q_norm"]), self._rms(k, L["k_norm"])
            base = self.theta
            if gemma and (i + 1) % 6 != 0:
                base = GEMMA_LOCAL_THETA
            q, k = self._rope(q, base, start), self._rope(k, base, start)
            if self.cache[i] is not None:
                k = np.concatenate([self.cache[i][0], k], 1)
                v = np.concatenate([self.cache[i][1], v], 1)
            self.cache[i] = (k, v)
            rep = d.heads // d.kv_heads
            kk, vv = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
            total = kk.shape[1]
            mask = np.where(
                np.arange(total)[None] > np.arange(start, start + n)[:, None], -np.inf, 0.0
            )
            s = q @ kk.transpose(0, 2, 1) / np.sqrt(d.head_dim) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            a = (p @ vv).transpose(1, 0, 2).reshape(n, d.heads * d.head_dim) @ L["o"].T
            if gemma:
                h = h + self._rms(a, L["post_attn_norm"])
                x = self._rms(h, L["ffn_norm"])
                g = x @ L["gate"].T
                gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
                h = h + self._rms((gelu * (x @ L["up"].T)) @ L["down"].T, L["post_ffw_norm"])
            else:
                h = h + a
                x = self._rms(h, L["ffn_norm"])
                g = x @ L["gate"].T
                h = h + ((g / (1 + np.exp(-g))) * (x @ L["up"].T)) @ L["down"].T
        self.pos += n
        h = self._rms(h, hf["norm"])
        if hidden:
            return h
        return h @ hf.get("lm_head", hf["embed"]).T


def numpy_forward(hf, ids, hidden=False, theta=None):
    """Logits (or final normed hidden states) of ``ids`` from a fresh reference forward."""
    if theta is None:
        theta = 1e6 if hf.get("arch") == "gemma3" else THETA
    return Reference(hf, theta)(list(ids), hidden=hidden)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_greedy(hf, prompt, n=16, theta=None):
    """(tokens, log-probs of them) of greedy decoding with the numpy reference."""
    if theta is None:
        theta = 1e6 if hf.get("arch") == "gemma3" else THETA
    ref = Reference(hf, theta)
    logits = ref(list(prompt))[-1]
    toks, lps = [], []
    for _ in range(n):
        lp = log_softmax(logits)
        t = int(np.argmax(lp))
        toks.append(t)
        lps.append(float(lp[t]))
        logits = ref([t])[-1]
    return toks, lps


def mlx_greedy(model, prompt, n=16):
    """(tokens, log-probs) of greedy decoding with mlx-lm's generate_step (KV cache)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    toks, lps = [], []
    for t, logprobs in generate_step(mx.array(list(prompt)), model, max_tokens=n):
        toks.append(int(t))
        lps.append(float(logprobs[int(t)].astype(mx.float32)))
    return toks, lps


def reference_forced_logprobs(hf, prompt, ids, theta=None):
    """Log-probs of each of ``ids`` after ``prompt`` and the ids before it (numpy reference)."""
    if theta is None:
        theta = 1e6 if hf.get("arch") == "gemma3" else THETA
    ref = Reference(hf, theta)
    logits, out = ref(list(prompt))[-1], []
    for t in ids:
        out.append(float(log_softmax(logits)[t]))
        logits = ref([t])[-1]
    return out


def mlx_forced_logprobs(model, prompt, ids):
    """The same with the mlx-lm model fed one token at a time through its KV cache."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits, out = model(mx.array([list(prompt)]), cache=cache)[0, -1], []
    for t in ids:
        lp = (logits - mx.logsumexp(logits)).astype(mx.float32)
        out.append(float(lp[t]))
        logits = model(mx.array([[t]]), cache=cache)[0, -1]
    return out
