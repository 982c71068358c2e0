"""GGUF -> MLX folder: tiny llama/qwen2/qwen3/gemma3 GGUFs written with gguf-py (tiny_gguf.py) in
every quantization gguf-py dequantizes, checked against a numpy forward of the same weights in
Hugging Face layout."""

import json

import mlx.core as mx
import numpy as np
import pytest
from tiny_gguf import (  # noqa: F401  (re-exported for test_convert_cli / test_convert_verifiers)
    CHAT_TEMPLATE,
    EPS,
    GEMMA_TEMPLATE,
    SMALL,
    THETA,
    T,
    hf_weights,
    mlx_forced_logprobs,
    mlx_greedy,
    numpy_forward,
    reference_forced_logprobs,
    reference_greedy,
    write_gguf,
)

from mlx_vgb.convert.gguf import GGUFModel, convert_gguf, load_gguf, load_weights
from mlx_vgb.convert.output import ConversionError, OutputExistsError

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = SMALL.hidden, SMALL.heads, SMALL.kv_heads, SMALL.ffn, 2


def _hf_weights(rng, vocab, arch, tied):
    return hf_weights(rng, vocab, arch, tied)


IDS = [1, 40, 72, 69, 76, 76, 79, 2, 5, 100]
PROMPTS = ([1, 40, 72, 69], [5, 100, 7, 7, 33, 2], [259, 260, 9])  # BPE vocabulary ids
SPM_PROMPTS = ([2, 265, 270], [2, 4, 100, 101, 102, 5], [2, 7, 270, 271, 264])
LOGIT_TOL = 1e-4  # max |logit - reference| / max |reference|, float32 weights
LOGPROB_TOL = 1e-3  # |log p - reference log p| of each greedy token, float32 weights


def _greedy(model, prompt, n=8):
    return mlx_greedy(model, prompt, n)[0]


def _check_against_reference(model, hf, prompts, logit_tol=LOGIT_TOL, greedy=True):
    got = np.array(model(mx.array([IDS[:8]]))[0].astype(mx.float32))
    expected = numpy_forward(hf, IDS[:8])
    assert np.abs(got - expected).max() / np.abs(expected).max() < logit_tol
    if not greedy:
        return
    for prompt in prompts:
        toks, lps = mlx_greedy(model, prompt, 16)
        ref_toks, ref_lps = reference_greedy(hf, prompt, 16)
        assert toks == ref_toks, (prompt, toks, ref_toks)
        np.testing.assert_allclose(lps, ref_lps, atol=LOGPROB_TOL)
    # teacher-forced: a fixed varied continuation through the KV cache, one token at a time
    # (random greedy models often repeat one token)
    ids = [int(i) for i in np.random.default_rng(0).integers(0, len(hf["embed"]), 16)]
    np.testing.assert_allclose(
        mlx_forced_logprobs(model, prompts[0], ids),
        reference_forced_logprobs(hf, prompts[0], ids),
        atol=LOGPROB_TOL,
    )


# every type gguf-py dequantizes: kept quantized (Q4_0/Q4_1/Q8_0) or dequantized to float32
QTYPES = [
    T.F32,
    T.F16,
    T.BF16,
    T.Q4_0,
    T.Q4_1,
    T.Q5_0,
    T.Q5_1,
    T.Q8_0,
    T.Q2_K,
    T.Q3_K,
    T.Q4_K,
    T.Q5_K,
    T.Q6_K,
]
KEPT_BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q8_0: 8}


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_every_quantization_decodes_like_the_numpy_reference(tmp_path, qtype):
    import mlx_lm

    hf = write_gguf(tmp_path / "m.gguf", arch="llama", qtype=qtype, tied=False)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype="float32", q_bits=None)
    model, _ = mlx_lm.load(str(out))
    _check_against_reference(model, hf, PROMPTS)

    config = json.loads((out / "config.json").read_text())
    assert config["rope_traditional"] is False
    if qtype in KEPT_BITS:
        assert config["quantization"]["group_size"] == 32
        assert config["quantization"]["bits"] == KEPT_BITS[qtype]
        assert model.model.layers[0].mlp.up_proj.bits == KEPT_BITS[qtype]  # stayed quantized
    else:
        assert "quantization" not in config
        assert model.model.layers[0].mlp.up_proj.weight.dtype == mx.float32


@pytest.mark.parametrize(
    "arch,qtype,tied",
    [
        ("qwen2", T.Q8_0, False),  # q/k/v biases, untied output
        ("qwen2", T.Q6_K, True),
        ("qwen3", T.Q5_0, False),  # per-head q/k RMSNorm
        ("qwen3", T.Q4_K, True),
        ("gemma3", T.Q4_0, True),  # 1 + w norms, 4 norms a layer, gelu, local/global rope
        ("gemma3", T.F16, False),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_every_architecture_decodes_like_the_numpy_reference(tmp_path, arch, qtype, tied):
    import mlx_lm

    hf = write_gguf(tmp_path / "m.gguf", arch=arch, qtype=qtype, tied=tied)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype="float32", q_bits=None)
    model, _ = mlx_lm.load(str(out))
    _check_against_reference(model, hf, SPM_PROMPTS if arch == "gemma3" else PROMPTS)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == {"gemma3": "gemma3_text"}.get(arch, arch)
    assert config["tie_word_embeddings"] is tied


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-2), ("bfloat16", 5e-2)])
def test_half_precision_casts_stay_close_to_the_reference(tmp_path, dtype, tol):
    import mlx_lm

    hf = write_gguf(tmp_path / "m.gguf", arch="qwen2", qtype=T.Q5_1, tied=False)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype=dtype, q_bits=None)
    model, _ = mlx_lm.load(str(out))
    assert model.model.layers[0].mlp.up_proj.weight.dtype == getattr(mx, dtype)
    _check_against_reference(model, hf, PROMPTS, logit_tol=tol, greedy=False)


def _hf_from_folder(folder, hf):
    """The reference weights of a converted folder: its tensors, quantized ones dequantized
    with mx.dequantize (group size and bits from config.json)."""
    config = json.loads((folder / "config.json").read_text())
    q = config.get("quantization", {})
    w = mx.load(str(folder / "model.safetensors"))

    def get(module):
        if f"{module}.scales" not in w:
            return np.array(w[f"{module}.weight"].astype(mx.float32))
        spec = q.get(module, q)
        a = mx.dequantize(
            w[f"{module}.weight"],
            w[f"{module}.scales"],
            w[f"{module}.biases"],
            group_size=spec["group_size"],
            bits=spec["bits"],
        )
        return np.array(a.astype(mx.float32))

    out = dict(hf, embed=get("model.embed_tokens"))
    if "lm_head" in hf:
        out["lm_head"] = get("lm_head")
    names = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    for i in range(hf["dims"].layers):
        out[i] = dict(hf[i], **{k: get(f"model.layers.{i}.{m}") for k, m in names.items()})
    return out


@pytest.mark.parametrize("q_bits", [4, 8])
def test_requantized_weights_decode_like_the_reference_on_them(tmp_path, q_bits):
    import mlx_lm

    hf = write_gguf(tmp_path / "m.gguf", arch="qwen2", qtype=T.Q6_K, tied=False)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype="float32", q_bits=q_bits)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == q_bits
    model, _ = mlx_lm.load(str(out))
    assert model.model.layers[1].mlp.down_proj.bits == q_bits
    assert model.model.norm.weight.dtype == mx.float32  # norms are not quantized
    requantized = _hf_from_folder(out, hf)
    assert np.abs(requantized[0]["up"] - hf[0]["up"]).max() > 0  # really re-quantized
    _check_against_reference(model, requantized, PROMPTS)


def test_mixed_file_keeps_native_blocks_and_requantizes_the_rest(tmp_path):
    import mlx_lm

    # like the Qwen2.5-Coder GGUF: Q8_0 embedding with K-quant / Q5_0 layers
    write_gguf(tmp_path / "m.gguf", arch="qwen2", qtype=T.Q4_K, embed_qtype=T.Q8_0)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype="float32", q_bits=4)
    q = json.loads((out / "config.json").read_text())["quantization"]
    assert q["bits"] == 4 and q["model.embed_tokens"]["bits"] == 8
    model, _ = mlx_lm.load(str(out))
    assert model.model.embed_tokens.bits == 8


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


@pytest.mark.parametrize(
    "pre,pieces",
    [
        ("llama-bpe", ["ab", "Ġ", "123", "4"]),  # Llama 3 / SmolLM3: up to 3 digits
        ("qwen2", ["ab", "Ġ", "1", "2", "3", "4"]),  # one digit a piece
        ("smollm", ["ab", "Ġ", "1", "2", "3", "4"]),
    ],
)
def test_pre_tokenizer_follows_the_gguf_pre_name(tmp_path, pre, pieces):
    from tokenizers import Tokenizer

    write_gguf(tmp_path / "m.gguf", pre=pre)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("ab 1234")] == pieces


def test_sentencepiece_tokenizer_rebuilt_from_gemma_metadata(tmp_path):
    import mlx_lm

    write_gguf(tmp_path / "m.gguf", arch="gemma3", qtype=T.Q8_0)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx")
    _, tok = mlx_lm.load(str(out))
    # ids: 6 specials, 256 <0xNN> byte tokens from 6, pieces from 262 (tiny_gguf.SPM_PIECES)
    assert tok.encode("the tin") == [2, 274, 273]  # <bos> the ▁tin: merges in file order
    assert tok.encode("a  c") == [2, 268, 276, 269]  # the "  " token, stored with real spaces
    assert tok.encode("é") == [2, 6 + 0xC3, 6 + 0xA9]  # byte fallback
    for text in ("the tin", "a  c", "héllo the\n", "<start_of_turn>user\nhi<end_of_turn>"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.encode("<start_of_turn>x", add_special_tokens=False) == [4, 6 + ord("x")]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert prompt[:2] == [2, 4] and prompt.count(2) == 1  # one <bos>, from the template
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == GEMMA_TEMPLATE and cfg["add_bos_token"] is True
    assert set(tok.eos_token_ids) == {1, 5}  # <eos> and <end_of_turn>


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


@pytest.mark.parametrize("arch,tied", [("qwen2", False), ("gemma3", True)])
def test_value_head_reads_the_converted_models_hidden_states(tmp_path, arch, tied):
    """MLXLanguageModel's hidden-state path (value head on h, logits from lm_head when untied,
    from the embedding when tied) matches the numpy reference on a converted GGUF."""
    import mlx_lm

    from mlx_vgb.lm import MLXLanguageModel
    from mlx_vgb.verifier_format import HeadConfig, ValueHead

    hf = write_gguf(tmp_path / "m.gguf", arch=arch, qtype=T.Q8_0, tied=tied)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "mlx", dtype="float32", q_bits=None)
    model, tok = mlx_lm.load(str(out))
    assert hasattr(model, "lm_head") is not tied
    mx.random.seed(0)
    head = ValueHead(HeadConfig(dims=[SMALL.hidden, 8, 1]))
    lm = MLXLanguageModel(model, tok, value_head=head)
    prompt = list((SPM_PROMPTS if arch == "gemma3" else PROMPTS)[1])
    lm.begin(prompt)
    prefixes = [(), (7,), (7, 9)]
    values, logprobs = lm.values(prefixes), lm.logprobs(prefixes)

    w1, b1, w2, b2 = (np.array(p) for L in head.layers for p in (L.weight, L.bias))
    for prefix, v, lp in zip(prefixes, values, logprobs):
        h = numpy_forward(hf, prompt + list(prefix), hidden=True)[-1]
        expected_v = 1 / (1 + np.exp(-(np.maximum(h @ w1.T + b1, 0) @ w2.T + b2)[0]))
        assert abs(v - expected_v) < 1e-5
        logits = numpy_forward(hf, prompt + list(prefix))[-1]
        np.testing.assert_allclose(
            lp,
            logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max(),
            atol=LOGPROB_TOL,
        )
