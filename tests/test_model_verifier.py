"""A separate verifier model (own backbone, own tokenizer, own KV cache) bridged through text."""

import json

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import tiny_model_folder

from mlx_vgb import VGB, Blocks, Candidates
from mlx_vgb.generate import load
from mlx_vgb.lm import MLXLanguageModel
from mlx_vgb.model_verifier import SeparateModelVerifier
from mlx_vgb.verifier_format import HeadConfig, ValueHead, VerifierConfig, save_verifier


def make_verifier_folder(tmp_path, backbone, merges=False):
    if merges:  # a different tokenizer: byte-level BPE with a few merges
        tj = json.loads((backbone / "tokenizer.json").read_text())
        tj["model"]["merges"] = ["h e", "t he", "Ġ t"]
        vocab = tj["model"]["vocab"]
        for m in ("he", "the", "Ġt"):
            vocab[m] = len(vocab)
        (backbone / "tokenizer.json").write_text(json.dumps(tj))
    hc = HeadConfig(type="mlp", dims=[32, 16, 1], activation="tanh", output="sigmoid")
    mx.random.seed(0)
    head = ValueHead(hc)
    mx.eval(head.parameters())
    out = tmp_path / ("ver-merges" if merges else "ver")
    save_verifier(out, VerifierConfig(head=hc, backbone="backbone"), head, backbone_src=backbone)
    return out, head


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return load(str(tiny_model_folder(tmp_path_factory.mktemp("g") / "gen", seed=5)))


def test_separate_verifier_values_match_its_backbone_on_bridged_text(gen, tmp_path):
    model, tok = gen
    vfolder, head = make_verifier_folder(
        tmp_path, tiny_model_folder(tmp_path / "vb", seed=9), merges=True
    )
    glm = MLXLanguageModel(model, tok)
    ver = SeparateModelVerifier(vfolder, glm.decode, glm.eos_token_ids, prompt_text="Say the")
    prompt = tok.encode("Say the")
    ver.begin(prompt)
    prefixes = [tuple(tok.encode(" the heat")), tuple(tok.encode(" thermal"))]
    got = ver.value(prefixes)
    vm, vt = load(str(vfolder / "backbone"))
    assert vt.encode("the") != tok.encode("the")  # the tokenizers really differ
    for p, g in zip(prefixes, got):
        ids = vt.encode("Say the") + vt.encode(tok.decode(list(p)), add_special_tokens=False)
        h = vm.model(mx.array([ids]))[0, -1]
        assert abs(g - float(head(h))) < 1e-4


def test_walk_with_separate_verifier_recomputes_nothing(gen, tmp_path):
    model, tok = gen
    vfolder, _ = make_verifier_folder(tmp_path, tiny_model_folder(tmp_path / "vb2", seed=11))
    glm = MLXLanguageModel(model, tok)
    ver = SeparateModelVerifier(vfolder, glm.decode, glm.eos_token_ids)
    prompt = tok.encode("Hello")
    total_back = 0
    for seed in range(3):
        r = VGB(horizon=12, actions=Blocks(3), choice=Candidates(3)).sample(
            glm, ver, prompt, seed=seed
        )
        total_back += r.stats.backtracks
        assert r.reached_leaf
        assert (glm.reprefill_tokens, ver.lm.reprefill_tokens) == (0, 0), (
            seed,
            glm.reprefill_tokens,
            ver.lm.reprefill_tokens,
            r.stats,
        )
    assert total_back > 0
    assert np.isfinite(ver.value([()])).all()
