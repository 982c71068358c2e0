"""The real SmolLM2 conversion (slow: run with `pytest -m slow`)."""

import mlx.core as mx
import pytest

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France?"


def _greedy(model, tokenizer, prompt, n=16):
    from mlx_lm.generate import generate_step

    out = []
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=n):
        if int(tok) in tokenizer.eos_token_ids:
            break
        out.append(int(tok))
    return out


def test_default_smollm2_folder_decodes_like_the_gguf_token_for_token(tmp_path, monkeypatch):
    import mlx_lm

    from mlx_vgb.convert import load_gguf
    from mlx_vgb.default_model import DEFAULT_MODEL_DIR, default_gguf_path, default_model_path

    monkeypatch.setenv("MLX_VGB_HOME", str(tmp_path))
    folder = default_model_path()
    assert folder == tmp_path / "models" / DEFAULT_MODEL_DIR
    assert default_model_path() == folder  # cached

    model, tok = mlx_lm.load(str(folder))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    folder_ids = _greedy(model, tok, prompt)
    text = tok.decode(folder_ids)
    assert "Paris" in text, text

    direct_model, direct_tok = load_gguf(default_gguf_path())
    assert (
        direct_tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}], add_generation_prompt=True
        )
        == prompt
    )
    assert _greedy(direct_model, direct_tok, prompt) == folder_ids
