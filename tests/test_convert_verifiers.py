"""Hugging Face generator and verifier checkpoints -> MLX, on tiny checkpoints written here
with numpy (safetensors), checked against numpy forwards of the same weights."""

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file
from test_convert_gguf import (
    EPS,
    FFN,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    THETA,
    _hf_weights,
    numpy_forward,
)

from mlx_vgb.convert import ConversionError, OutputExistsError, convert_hf, convert_verifier
from mlx_vgb.verifier_format import load_verifier

VOCAB = 64
IDS = [3, 10, 2, 7, 7, 1, 5, 2]  # 2 = "\n", 1 = "<extra_0>"


def hf_state_dict(hf):
    sd = {"model.embed_tokens.weight": hf["embed"], "model.norm.weight": hf["norm"]}
    if "lm_head" in hf:
        sd["lm_head.weight"] = hf["lm_head"]
    names = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(LAYERS):
        for k, v in hf[i].items():
            if k.endswith("_bias"):
                sd[f"model.layers.{i}.{names[k[0]]}.bias"] = v
            else:
                sd[f"model.layers.{i}.{names[k]}.weight"] = v
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def write_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<extra_0>": 1, "\n": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<unk>",
                "additional_special_tokens": ["<extra_0>"],
            }
        )
    )


def write_hf_model(folder, arch="llama", head=None, tied=True, seed=0, architectures=None):
    """A tiny Hugging Face checkpoint; returns its weights (HF layout) for numpy_forward."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    hf = _hf_weights(rng, VOCAB, arch, tied)
    sd = hf_state_dict(hf)
    if head:
        sd.update(head(rng))
    save_file(sd, str(folder / "model.safetensors"))
    config = {
        "model_type": arch,
        "architectures": architectures or ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": EPS,
        "vocab_size": VOCAB,
        "rope_theta": THETA,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 128,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer(folder)
    return hf, sd


def test_hf_conversion_matches_numpy_forward(tmp_path):
    import mlx_lm

    hf, _ = write_hf_model(tmp_path / "hf")
    out = convert_hf(tmp_path / "hf", tmp_path / "mlx", dtype="float32")
    model, _ = mlx_lm.load(str(out))
    got = np.array(model(mx.array([IDS]))[0])
    expected = numpy_forward(hf, IDS)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


def test_hf_conversion_quantizes_with_mlx_lm_flags(tmp_path):
    import mlx_lm

    hf, _ = write_hf_model(tmp_path / "hf")
    out = convert_hf(
        tmp_path / "hf", tmp_path / "mlx", quantize=True, q_bits=8, q_group_size=32, dtype="float32"
    )
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 32
    model, _ = mlx_lm.load(str(out))
    got = np.array(model(mx.array([IDS]))[0])
    expected = numpy_forward(hf, IDS)
    assert (
        np.abs(got - expected).max() / np.abs(expected).max() < 5e-2
    )  # 8-bit weights, embedding too
    assert model.model.layers[0].mlp.up_proj.bits == 8
    with pytest.raises(OutputExistsError):
        convert_hf(tmp_path / "hf", tmp_path / "mlx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mlx"]


def _verifier_scores(folder, ids):
    import mlx_lm

    config, head, backbone = load_verifier(folder)
    model, _ = mlx_lm.load(str(backbone))
    hidden = model.model(mx.array([ids]))  # final normed hidden state (hidden_layer -1)
    return config, np.array(head(hidden)[0])


def test_qwen_prm_scores_match_numpy(tmp_path):
    def head(rng):
        return {
            "score.0.weight": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) * 0.2,
            "score.0.bias": rng.standard_normal(HIDDEN).astype(np.float32) * 0.1,
            "score.2.weight": rng.standard_normal((2, HIDDEN)).astype(np.float32) * 0.5,
            "score.2.bias": np.array([0.1, -0.1], dtype=np.float32),
        }

    hf, sd = write_hf_model(
        tmp_path / "hf",
        arch="qwen2",
        head=head,
        tied=False,
        architectures=["Qwen2ForProcessRewardModel"],
    )
    del hf["lm_head"]  # a PRM has no LM head
    import safetensors.numpy as stn

    stn.save_file(
        {k: v for k, v in sd.items() if k != "lm_head.weight"},
        str(tmp_path / "hf" / "model.safetensors"),
    )
    out = convert_verifier("qwen-prm", tmp_path / "hf", tmp_path / "prm", dtype="float32")
    config, got = _verifier_scores(out, IDS)

    h = numpy_forward(hf, IDS, hidden=True)
    x = np.maximum(h @ sd["score.0.weight"].T + sd["score.0.bias"], 0)
    x = x @ sd["score.2.weight"].T + sd["score.2.bias"]
    p1 = np.exp(x[:, 1]) / np.exp(x).sum(-1)
    np.testing.assert_allclose(got, p1, atol=1e-4)
    assert (config.read_at, config.step_token, config.step_token_id) == (
        "step_token",
        "<extra_0>",
        1,
    )
    assert config.head.dims == [HIDDEN, HIDDEN, 2] and config.head.output == "softmax:1"


def test_skywork_prm_scores_match_numpy(tmp_path):
    def head(rng):
        return {
            "v_head.summary.weight": rng.standard_normal((1, HIDDEN)).astype(np.float32),
            "v_head.summary.bias": np.array([0.3], dtype=np.float32),
        }

    hf, sd = write_hf_model(
        tmp_path / "hf",
        arch="qwen2",
        head=head,
        tied=False,
        seed=1,
        architectures=["Qwen2ForCausalLM"],
    )
    out = convert_verifier("skywork-prm", tmp_path / "hf", tmp_path / "prm", dtype="float32")
    config, got = _verifier_scores(out, IDS)
    h = numpy_forward(hf, IDS, hidden=True)
    z = h @ sd["v_head.summary.weight"].T[:, 0] + 0.3
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-z)), atol=1e-4)
    assert (config.step_token, config.step_token_id, config.head.output) == ("\n", 2, "sigmoid")


def test_own_value_head_scores_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    w = {
        "net.0.weight": rng.standard_normal((16, HIDDEN)).astype(np.float32),
        "net.0.bias": rng.standard_normal(16).astype(np.float32),
        "net.2.weight": rng.standard_normal((1, 16)).astype(np.float32),
        "net.2.bias": np.zeros(1, dtype=np.float32),
    }
    save_file(w, str(tmp_path / "head.safetensors"))
    out = convert_verifier(
        "value-head", tmp_path / "head.safetensors", tmp_path / "v", activation="tanh"
    )
    config, head, backbone = load_verifier(out)
    assert backbone is None and config.backbone == "generator"
    h = rng.standard_normal((3, HIDDEN)).astype(np.float32)
    z = np.tanh(h @ w["net.0.weight"].T + w["net.0.bias"]) @ w["net.2.weight"].T
    np.testing.assert_allclose(np.array(head(mx.array(h))), 1 / (1 + np.exp(-z[:, 0])), rtol=1e-5)


def test_wrong_verifier_kind_names_the_missing_head(tmp_path):
    write_hf_model(tmp_path / "hf", arch="qwen2", tied=False)
    with pytest.raises(ConversionError, match="no score.\\* weights: it is not a qwen-prm"):
        convert_verifier("qwen-prm", tmp_path / "hf", tmp_path / "prm")
    with pytest.raises(ConversionError, match="Verifier kind 'orm' is not supported"):
        convert_verifier("orm", tmp_path / "hf", tmp_path / "prm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
