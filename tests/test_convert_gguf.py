"""GGUF -> MLX folder: tiny llama/qwen2 GGUFs written here with the `gguf` writer, checked
against a numpy forward of the same weights in Hugging Face layout."""

import json

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from mlx_vgb.convert.gguf import GGUFModel, convert_gguf, load_gguf, load_weights
from mlx_vgb.convert.output import ConversionError, OutputExistsError

T = gguf.GGMLQuantizationType
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, THETA, EPS = 64, 4, 2, 128, 2, 10000.0, 1e-5
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_alphabet():
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


def _vocab():
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens = SPECIALS + _byte_alphabet() + [m.replace(" ", "") for m in merges]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


def _permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _hf_weights(rng, vocab, arch, tied):
    head_dim = HIDDEN // HEADS
    w = {
        "embed": rng.standard_normal((vocab, HIDDEN)).astype(np.float32) * 0.5,
        "norm": 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32),
    }
    if not tied:
        w["lm_head"] = rng.standard_normal((vocab, HIDDEN)).astype(np.float32) * 0.2
    for i in range(LAYERS):
        s = 0.2
        w[i] = {
            "q": rng.standard_normal((HEADS * head_dim, HIDDEN)).astype(np.float32) * s,
            "k": rng.standard_normal((KV_HEADS * head_dim, HIDDEN)).astype(np.float32) * s,
            "v": rng.standard_normal((KV_HEADS * head_dim, HIDDEN)).astype(np.float32) * s,
            "o": rng.standard_normal((HIDDEN, HEADS * head_dim)).astype(np.float32) * s,
            "gate": rng.standard_normal((FFN, HIDDEN)).astype(np.float32) * s,
            "up": rng.standard_normal((FFN, HIDDEN)).astype(np.float32) * s,
            "down": rng.standard_normal((HIDDEN, FFN)).astype(np.float32) * s,
            "attn_norm": 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32),
            "ffn_norm": 1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32),
        }
        if arch == "qwen2":
            for b, n in (("q_bias", HEADS), ("k_bias", KV_HEADS), ("v_bias", KV_HEADS)):
                w[i][b] = rng.standard_normal(n * head_dim).astype(np.float32) * 0.1
    return w


def write_gguf(
    path, arch="llama", qtype=T.F32, tied=True, tokenizer=True, seed=0, extra_tensor=None
):
    """Write a tiny GGUF; return the Hugging Face layout weights it holds (dequantized)."""
    rng = np.random.default_rng(seed)
    tokens, types, merges = _vocab()
    hf = _hf_weights(rng, len(tokens), arch, tied)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(THETA)
    w.add_vocab_size(len(tokens))
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_chat_template(CHAT_TEMPLATE)

    def add(name, a, kind=qtype):
        if a.ndim == 1 or kind == T.F32:
            w.add_tensor(name, a.astype(np.float32))
            return a
        q = quantize(a, kind)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
        return dequantize(q, kind)  # what the file really holds

    permute = arch == "llama"
    embed_kind = T.Q8_0 if qtype in (T.Q4_0, T.Q4_1) else qtype
    hf["embed"] = add("token_embd.weight", hf["embed"], embed_kind)
    add("output_norm.weight", hf["norm"])
    if not tied:
        hf["lm_head"] = add("output.weight", hf["lm_head"])
    for i in range(LAYERS):
        L = hf[i]
        for hf_name, gg_name, n in (("q", "attn_q", HEADS), ("k", "attn_k", KV_HEADS)):
            stored = _permute(L[hf_name], n) if permute else L[hf_name]
            back = add(f"blk.{i}.{gg_name}.weight", stored)
            # undo the permutation on what the file holds to get the HF-layout truth
            inv = back.reshape(n, back.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(back.shape)
            L[hf_name] = inv if permute else back
        for hf_name, gg_name in (
            ("v", "attn_v"),
            ("o", "attn_output"),
            ("gate", "ffn_gate"),
            ("up", "ffn_up"),
            ("down", "ffn_down"),
        ):
            L[hf_name] = add(f"blk.{i}.{gg_name}.weight", L[hf_name])
        add(f"blk.{i}.attn_norm.weight", L["attn_norm"])
        add(f"blk.{i}.ffn_norm.weight", L["ffn_norm"])
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


def numpy_forward(hf, ids, hidden=False):
    """Logits (or final normed hidden states) of a llama/qwen2 decoder in Hugging Face layout
    (rotate-half rope), float64."""
    head_dim = HIDDEN // HEADS

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * g

    def rope(x):  # (heads, L, head_dim)
        pos = np.arange(x.shape[1])[:, None]
        inv = THETA ** (-np.arange(0, head_dim, 2) / head_dim)
        ang = pos * inv[None]
        cos, sin = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    n = len(ids)
    h = hf["embed"][ids].astype(np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(LAYERS):
        L = hf[i]
        x = rms(h, L["attn_norm"])
        q = x @ L["q"].T + L.get("q_bias", 0)
        k = x @ L["k"].T + L.get("k_bias", 0)
        v = x @ L["v"].T + L.get("v_bias", 0)
        q = rope(q.reshape(n, HEADS, head_dim).transpose(1, 0, 2))
        k = rope(k.reshape(n, KV_HEADS, head_dim).transpose(1, 0, 2))
        v = v.reshape(n, KV_HEADS, head_dim).transpose(1, 0, 2)
        rep = HEADS // KV_HEADS
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = (p @ v).transpose(1, 0, 2).reshape(n, HEADS * head_dim)
        h = h + a @ L["o"].T
        x = rms(h, L["ffn_norm"])
        g = x @ L["gate"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ L["up"].T)) @ L["down"].T
    h = rms(h, hf["norm"])
    if hidden:
        return h
    return h @ hf.get("lm_head", hf["embed"]).T


IDS = [1, 40, 72, 69, 76, 76, 79, 2, 5, 100]


def _greedy(model, prompt, n=8):
    from mlx_lm.generate import generate_step

    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


@pytest.mark.parametrize(
    "arch,qtype,tied,dtype,tol",
    [
        ("llama", T.F32, True, "float32", 1e-4),  # exact weights: checks un-permute + rope
        ("llama", T.Q4_0, True, "float16", 5e-3),  # Q4_0 kept quantized, Q8_0 embedding
        ("llama", T.Q4_1, False, "float16", 5e-3),  # (float16 scales: 5e-3)
        ("llama", T.F16, True, "float16", 2e-2),  # F16 cast, float16 weights
        ("llama", T.Q5_0, True, "float32", 1e-4),  # dequantized by gguf.quants
        ("qwen2", T.Q8_0, False, "float16", 5e-3),  # biases, no GGUF permutation
    ],
)
def test_converted_folder_logits_match_numpy_forward(tmp_path, arch, qtype, tied, dtype, tol):
    import mlx_lm

    hf = write_gguf(tmp_path / "m.gguf", arch=arch, qtype=qtype, tied=tied)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype=dtype)
    model, _ = mlx_lm.load(str(out))
    got = np.array(model(mx.array([IDS]))[0].astype(mx.float32))
    expected = numpy_forward(hf, IDS)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() / scale < tol

    config = json.loads((out / "config.json").read_text())
    assert config["rope_traditional"] is False
    if qtype in (T.Q4_0, T.Q4_1, T.Q8_0):
        bits = 8 if qtype == T.Q8_0 else 4
        assert config["quantization"]["group_size"] == 32
        assert config["quantization"]["bits"] == bits
        assert model.model.layers[0].mlp.up_proj.bits == bits  # stayed quantized
    else:
        assert "quantization" not in config


def test_folder_via_mlx_lm_load_greedy_decodes_like_gguf_read_directly(tmp_path):
    import mlx_lm

    write_gguf(tmp_path / "m.gguf", qtype=T.Q4_1, tied=False, seed=3)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")
    folder_model, folder_tok = mlx_lm.load(str(out))
    direct_model, direct_tok = load_gguf(tmp_path / "m.gguf")

    prompt = folder_tok.apply_chat_template(
        [{"role": "user", "content": "the tin"}], add_generation_prompt=True
    )
    assert prompt == direct_tok.apply_chat_template(
        [{"role": "user", "content": "the tin"}], add_generation_prompt=True
    )
    a = np.array(folder_model(mx.array([prompt]))[0])
    b = np.array(direct_model(mx.array([prompt]))[0])
    np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(b).max())
    assert _greedy(folder_model, prompt) == _greedy(direct_model, prompt)


def test_quantized_blocks_repack_bit_exact_to_mx_load(tmp_path):
    write_gguf(tmp_path / "m.gguf", qtype=T.Q4_0, tied=False)
    path = tmp_path / "m.gguf"
    ref = mx.load(str(path))  # MLX's own GGUF reader
    weights, quant = load_weights(GGUFModel(path), unpermute=False)
    assert quant["bits"] == 4 and quant["model.embed_tokens"]["bits"] == 8
    pairs = {
        "blk.1.ffn_down": "model.layers.1.mlp.down_proj",
        "output": "lm_head",
        "token_embd": "model.embed_tokens",
        "blk.0.attn_q": "model.layers.0.self_attn.q_proj",
    }
    for g, m in pairs.items():
        for part in ("weight", "scales", "biases"):
            assert mx.array_equal(weights[f"{m}.{part}"], ref[f"{g}.{part}"]).item(), (g, part)


def test_tokenizer_rebuilt_from_metadata(tmp_path):
    import mlx_lm

    write_gguf(tmp_path / "m.gguf")
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")
    _, tok = mlx_lm.load(str(out))
    # ids: 3 specials, 256 byte symbols ("t" = 3 + 116 - 33 = 86), then merges from 259
    assert tok.encode("the tin") == [86, 260, 259, 262]  # t|he Ġt|in
    text = "the tin 123 héllo\n"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("123")) == 3  # smollm pre-tokenizer splits digits
    assert tok.encode("<|im_start|>x<|im_end|>") == [1, tok.encode("x")[0], 2]
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE and cfg["eos_token"] == "<|im_end|>"
    assert tok.eos_token_id == 2


def test_truncated_file_is_refused(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    for n, name in ((len(data) - 100, "cut.gguf"), (200, "stub.gguf")):
        (tmp_path / name).write_bytes(data[:n])
        with pytest.raises(ConversionError, match="truncated"):
            convert_gguf(tmp_path / name, tmp_path / "mlx")
    assert not (tmp_path / "mlx").exists()


def test_unsupported_architecture_is_named(tmp_path):
    write_gguf(tmp_path / "m.gguf", arch="falcon")
    with pytest.raises(ConversionError, match="architecture 'falcon' is not supported"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")


def test_unsupported_quantization_is_named(tmp_path):
    raw = np.zeros((2, 40), dtype=np.uint8)  # 2 rows of one Q8_1 block (32 values)
    write_gguf(tmp_path / "m.gguf", extra_tensor=("blk.0.extra.weight", raw, T.Q8_1))
    with pytest.raises(ConversionError, match="blk.0.extra.weight has GGML type Q8_1"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")


def test_missing_tokenizer_is_named_and_tokenizer_path_fixes_it(tmp_path):
    write_gguf(tmp_path / "with.gguf")
    donor = convert_gguf(tmp_path / "with.gguf", tmp_path / "donor")
    write_gguf(tmp_path / "m.gguf", tokenizer=False)
    with pytest.raises(ConversionError, match="no tokenizer in its metadata"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")
    assert not (tmp_path / "mlx").exists()
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", tokenizer_path=donor)
    assert (out / "tokenizer.json").read_bytes() == (donor / "tokenizer.json").read_bytes()


def test_existing_output_is_refused_unless_force(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")
    assert (tmp_path / "mlx" / "keep.txt").exists()
    convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", force=True)
    assert sorted(p.name for p in (tmp_path / "mlx").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "mlx"]  # no temp leftovers


def test_dequantized_conversion_matches_the_quantized_one(tmp_path):
    import mlx_lm

    write_gguf(tmp_path / "m.gguf", arch="llama", qtype=T.Q4_1, tied=True)
    q = convert_gguf(tmp_path / "m.gguf", tmp_path / "q", dtype="float32")
    f = convert_gguf(tmp_path / "m.gguf", tmp_path / "f", dtype="float32", dequantize=True)
    assert "quantization" not in json.loads((f / "config.json").read_text())
    mq, _ = mlx_lm.load(str(q))
    mf, _ = mlx_lm.load(str(f))
    assert not hasattr(mf.model.layers[0].mlp.up_proj, "bits")
    lq = np.array(mq(mx.array([IDS]))[0])
    lf = np.array(mf(mx.array([IDS]))[0])
    assert np.abs(lq - lf).max() / np.abs(lq).max() < 1e-3
