import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mlx_vgb.verifier_format import (
    CONFIG_FILE,
    HEAD_FILE,
    HeadConfig,
    ValueHead,
    VerifierConfig,
    VerifierFormatError,
    load_verifier,
    pool_hidden,
    save_verifier,
)


def _np_head(weights, x, activation, output):
    n = len(weights) // 2
    for i in range(n):
        if i > 0:
            x = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}[activation](x)
        x = x @ weights[f"layers.{i}.weight"].T + weights[f"layers.{i}.bias"]
    if output == "sigmoid":
        return 1 / (1 + np.exp(-x[..., 0]))
    if output == "identity":
        return x[..., 0]
    k = int(output.split(":")[1])
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True))[..., k]


@pytest.mark.parametrize(
    "dims,activation,output",
    [
        ([16, 1], "relu", "sigmoid"),
        ([16, 8, 1], "tanh", "identity"),
        ([16, 16, 2], "relu", "softmax:1"),
    ],
)
def test_saved_verifier_scores_match_numpy_head(tmp_path, dims, activation, output):
    mx.random.seed(0)
    config = VerifierConfig(head=HeadConfig(dims=dims, activation=activation, output=output))
    head = ValueHead(config.head)
    save_verifier(tmp_path / "v", config, head)

    weights = load_file(str(tmp_path / "v" / HEAD_FILE))  # numpy-readable, no MLX needed
    hidden = np.random.default_rng(1).standard_normal((2, 5, dims[0])).astype(np.float32)
    expected = _np_head(weights, hidden, activation, output)

    config2, head2, backbone = load_verifier(tmp_path / "v")
    assert backbone is None
    assert config2 == config
    got = np.array(head2(mx.array(hidden)))
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_config_json_has_documented_keys(tmp_path):
    config = VerifierConfig(
        head=HeadConfig(dims=[8, 1]), read_at="step_token", step_token="\n", step_token_id=198
    )
    save_verifier(tmp_path / "v", config, ValueHead(config.head))
    d = json.loads((tmp_path / "v" / CONFIG_FILE).read_text())
    assert d["format"] == "mlx-vgb-verifier" and d["format_version"] == 1
    assert d["head"] == {"type": "mlp", "dims": [8, 1], "activation": "relu", "output": "sigmoid"}
    assert (d["backbone"], d["hidden_layer"], d["pooling"]) == ("generator", -1, "last")
    assert (d["read_at"], d["step_token"], d["step_token_id"]) == ("step_token", "\n", 198)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format_version": 2}, "format_version"),
        ({"pooling": "max"}, "pooling"),
        ({"read_at": "step_token"}, "step_token"),
        ({"backbone": "../elsewhere"}, "relative subfolder"),
        ({"head": {"type": "mlp", "dims": [8, 2], "output": "sigmoid"}}, "dims\\[-1\\] == 1"),
        ({"head": {"type": "mlp", "dims": [8, 2], "output": "softmax:2"}}, "softmax:2"),
        ({"head": {"type": "mlp", "dims": [8, 1], "activation": "swish"}}, "activation"),
        ({"head": {"type": "lstm", "dims": [8, 1]}}, "lstm"),
        ({"extra_key": 1}, "extra_key"),
    ],
)
def test_invalid_config_is_refused_with_a_clear_message(tmp_path, change, message):
    config = VerifierConfig(head=HeadConfig(dims=[8, 1]))
    save_verifier(tmp_path / "v", config, ValueHead(config.head))
    d = json.loads((tmp_path / "v" / CONFIG_FILE).read_text())
    d.update(change)
    (tmp_path / "v" / CONFIG_FILE).write_text(json.dumps(d))
    with pytest.raises(VerifierFormatError, match=message):
        load_verifier(tmp_path / "v")


def test_head_weights_must_match_dims(tmp_path):
    config = VerifierConfig(head=HeadConfig(dims=[8, 1]))
    save_verifier(tmp_path / "v", config, ValueHead(config.head))
    mx.save_safetensors(str(tmp_path / "v" / HEAD_FILE), {"layers.0.weight": mx.zeros((1, 4))})
    with pytest.raises(VerifierFormatError, match="missing \\['layers.0.bias'\\]"):
        load_verifier(tmp_path / "v")


def test_existing_folder_is_refused_unless_force(tmp_path):
    config = VerifierConfig(head=HeadConfig(dims=[4, 1]))
    head = ValueHead(config.head)
    save_verifier(tmp_path / "v", config, head)
    with pytest.raises(FileExistsError, match="force"):
        save_verifier(tmp_path / "v", config, head)
    config.metadata["run"] = 2
    save_verifier(tmp_path / "v", config, head, force=True)
    assert load_verifier(tmp_path / "v")[0].metadata == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no temp folders left


def test_backbone_subfolder_is_copied_and_returned(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    config = VerifierConfig(head=HeadConfig(dims=[4, 1]), backbone="backbone")
    save_verifier(tmp_path / "v", config, ValueHead(config.head), backbone_src=src)
    _, _, backbone = load_verifier(tmp_path / "v")
    assert backbone == tmp_path / "v" / "backbone"
    assert (backbone / "config.json").read_text() == "{}"


def test_mean_pooling_is_a_running_mean_over_the_prefix():
    h = mx.array(np.arange(12, dtype=np.float32).reshape(1, 4, 3))
    pooled = np.array(pool_hidden(h, "mean"))
    expected = np.cumsum(np.array(h), axis=1) / np.arange(1, 5)[None, :, None]
    np.testing.assert_allclose(pooled, expected)
    assert np.array_equal(np.array(pool_hidden(h, "last")), np.array(h))
