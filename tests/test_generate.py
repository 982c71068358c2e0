"""`mlx_vgb.generate` and `mlx-vgb generate` on a tiny random model folder."""

import subprocess
import sys

import pytest
from tiny_models import tiny_model_folder

from mlx_vgb import Append, Backtrack, Done
from mlx_vgb.errors import ConfigError
from mlx_vgb.generate import generate, load, stream_generate


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model", seed=2)


@pytest.fixture(scope="module")
def loaded(folder):
    return load(str(folder))


def test_stream_events_replay_to_final_text(loaded):
    model, tok = loaded
    # forbid two common bytes: the walk must backtrack at times
    resps = list(
        stream_generate(
            model,
            tok,
            "Tell me",
            verifier="forbid:a|e|o|i",
            max_tokens=16,
            block=2,
            candidates=3,
            seed=1,
        )
    )
    kinds = {type(r.event) for r in resps}
    assert Done in kinds and Append in kinds
    final = resps[-1]
    assert final.result.reached_leaf
    for w in "aeoi":
        assert w not in final.text.lower()
    text = ""
    for r in resps[:-1]:  # erase, then append: replays to the same text
        if r.erased:
            assert text.endswith(r.erased)
            text = text[: len(text) - len(r.erased)]
        text += r.appended
        assert text == r.text
    assert text == final.text


def test_backtracks_are_streamed(loaded):
    model, tok = loaded
    seen = 0
    for seed in range(6):
        for r in stream_generate(
            model,
            tok,
            "Go",
            verifier="forbid:a|e|o|i|u|t|s",
            block=2,
            max_tokens=12,
            candidates=2,
            seed=seed,
        ):
            if isinstance(r.event, Backtrack):
                seen += 1
                assert r.erased or r.event.n_tokens > 0
    assert seen > 0


def test_same_seed_same_text(loaded):
    model, tok = loaded
    a = generate(model, tok, "Hi", verifier="no-letter:e,alpha=0.5", max_tokens=10, seed=5)
    b = generate(model, tok, "Hi", verifier="no-letter:e,alpha=0.5", max_tokens=10, seed=5)
    assert a == b


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=10_000), "context"),
        (dict(verifier="what:ever:x"), "unknown verifier|cannot import"),
        (dict(sampler="nope"), "unknown sampler"),
        (dict(verifier="regex:(["), "bad regex"),
        (dict(drift=1.5), "drift"),
        (dict(candidates=0), "must be an integer >= 1"),
    ],
)
def test_bad_settings_raise_clear_errors(loaded, kw, msg):
    model, tok = loaded
    args = dict(prompt="Hi", max_tokens=8)
    args.update(kw)
    with pytest.raises(ConfigError, match=msg):
        list(stream_generate(model, tok, args.pop("prompt"), **args))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found|not an MLX model folder"):
        load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not an MLX model folder"):
        load(str(tmp_path / "empty"))


def test_cli_generate_end_to_end(folder):
    cmd = [
        sys.executable,
        "-m",
        "mlx_vgb.cli",
        "generate",
        "--model",
        str(folder),
        "-p",
        "Hi",
        "--verifier",
        "no-letter:e",
        "--max-tokens",
        "12",
        "--block",
        "3",
        "--verbose",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "steps:" in out.stdout and "reached leaf: True" in out.stdout
    bad = subprocess.run(
        cmd[:-1] + ["--sampler", "vgb", "--verifier", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "unknown verifier" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_default_drift_is_half_for_lines_and_one_otherwise():
    from mlx_vgb.registry import make_sampler

    assert make_sampler("vgb", max_tokens=8, block="line", line_tokens=frozenset({1})).drift == 0.5
    assert make_sampler("vgb", max_tokens=8, block=4).drift == 1.0
    assert (
        make_sampler("vgb", max_tokens=8, block="line", line_tokens=frozenset({1}), drift=1.0).drift
        == 1.0
    )


def test_walks_use_the_exact_rule_unless_the_verifier_asks_for_the_fast_one(loaded):
    model, tok = loaded
    last = list(stream_generate(model, tok, "Hi", max_tokens=4, seed=0))[-1]
    assert last.choice == "rejection"
    last = list(stream_generate(model, tok, "Hi", max_tokens=4, seed=0, verifier="no-letter:e"))[-1]
    assert last.choice == "self-normalized"
    last = list(
        stream_generate(
            model, tok, "Hi", max_tokens=4, seed=0, verifier="no-letter:e", choice="rejection"
        )
    )[-1]
    assert last.choice == "rejection"


def test_prefill_response_starts_the_answer(loaded):
    from mlx_vgb.generate import encode_prompt

    model, tok = loaded
    plain = encode_prompt(tok, "Hi")
    pre = encode_prompt(tok, "Hi", prefill_response="```python\n")
    # the template's ids, then the prefill's bytes (byte-level vocab: one token per byte)
    assert pre[: len(plain)] == plain and tok.decode(pre[len(plain) :]) == "```python\n"
    a = list(stream_generate(model, tok, "Hi", max_tokens=6, seed=3, prefill_response="def"))[-1]
    b = list(
        stream_generate(
            model, tok, encode_prompt(tok, "Hi") + tok.encode("def"), max_tokens=6, seed=3
        )
    )[-1]
    assert a.text == b.text and a.result.tokens == b.result.tokens


def test_cli_prefill_response(folder, loaded):
    model, tok = loaded
    cmd = [sys.executable, "-m", "mlx_vgb.cli", "generate", "--model", str(folder), "-p", "Hi"]
    cmd += ["--max-tokens", "6", "--sampler", "plain", "--temp", "0", "--prefill-response", "xyz"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    want = generate(
        model, tok, "Hi", max_tokens=6, sampler="plain", temp=0.0, prefill_response="xyz"
    )
    assert want != generate(model, tok, "Hi", max_tokens=6, sampler="plain", temp=0.0)
    assert out.stdout.rstrip("\n") == want  # the continuation only, as mlx-lm prints it


def _random_head(path, hidden: int):
    import mlx.core as mx

    from mlx_vgb.verifier_format import HeadConfig, ValueHead, VerifierConfig, save_verifier

    mx.random.seed(0)
    cfg = VerifierConfig(head=HeadConfig(dims=[hidden, 8, 1]))
    save_verifier(path, cfg, ValueHead(cfg.head))
    return str(path)


def test_code_head_is_a_named_verifier_with_clear_errors(loaded, tmp_path):
    from mlx_vgb.registry import CODE_HEAD, CodeHeadSpec, parse_verifier

    model, tok = loaded
    spec = parse_verifier("code-head")
    assert isinstance(spec, CodeHeadSpec) and spec.path == str(CODE_HEAD)
    assert spec.to_string() == "code-head" and spec.stop_text == "```"
    with pytest.raises(ConfigError, match="no shipped head.*pipeline.sh"):
        CodeHeadSpec(path=str(tmp_path / "absent")).load_head(model)
    other = CodeHeadSpec(path=_random_head(tmp_path / "h64", hidden=64))
    with pytest.raises(ConfigError, match="trained for another model"):
        list(stream_generate(model, tok, "Hi", verifier=other, max_tokens=4))


def test_the_shipped_code_head_reads_qwen_hidden_states_and_has_its_card():
    """The package ships the head trained by results/code/pipeline.sh: a head for
    Qwen2.5-Coder-0.5B's 896-wide hidden state, with the card naming its command and metrics,
    and V^ values that vary with the hidden state (not one constant)."""
    import mlx.core as mx
    import numpy as np

    from mlx_vgb.registry import CODE_HEAD
    from mlx_vgb.verifier_format import load_verifier

    cfg, head, backbone = load_verifier(CODE_HEAD)
    assert cfg.head.dims[0] == 896 and cfg.head.output == "sigmoid" and backbone is None
    card = (CODE_HEAD / "README.md").read_text()
    assert "mlx-vgb train-verifier" in card and "within-prompt AUC" in card
    h = mx.array(np.random.default_rng(0).normal(size=(64, 896)).astype(np.float32) * 4)
    v = np.array(head(h))
    assert ((v > 0) & (v < 1)).all() and v.std() > 1e-3


def test_code_head_ends_answers_at_its_stop_text(loaded, tmp_path):
    from collections import Counter

    from mlx_vgb.registry import CodeHeadSpec, make_language_model
    from mlx_vgb.vocab import tokens_containing

    model, tok = loaded
    head = _random_head(tmp_path / "h", hidden=32)
    free = [
        list(
            stream_generate(
                model, tok, "Hi", verifier=CodeHeadSpec(path=head), max_tokens=24, seed=s
            )
        )[-1].result.tokens
        for s in range(3)
    ]
    # the byte vocabulary has no token holding a whole fence: stop at the ASCII byte written
    # most (other bytes decode to the same replacement character)
    ascii_ = [t for toks in free for t in toks[:-1] if tok.decode([t]).isascii()]
    e, _ = Counter(ascii_).most_common(1)[0]
    assert {e} <= tokens_containing(tok, tok.decode([e])) <= {e, 256, 257}  # + the specials

    class StopAt(CodeHeadSpec):
        stop_text = tok.decode([e])

    spec = StopAt(path=head)
    assert e in make_language_model(model, tok, spec).eos_token_ids
    assert e not in make_language_model(model, tok, CodeHeadSpec(path=head)).eos_token_ids
    stopped = 0
    for seed in range(6):
        r = list(stream_generate(model, tok, "Hi", verifier=spec, max_tokens=24, seed=seed))[-1]
        toks = r.result.tokens
        assert e not in toks[:-1]  # the stop ends the answer where it first comes
        stopped += toks[-1] == e
    assert stopped >= 3
