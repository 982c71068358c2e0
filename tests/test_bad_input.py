"""Bad input end to end: one clear exception with a message that says what to do."""

import math
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_model_folder

from mlx_vgb import (
    VGB,
    Blocks,
    Candidates,
    ConfigError,
    DeadEndError,
    EmptyPromptError,
    Enumerate,
    FunctionVerifier,
    VerifierError,
    toy,
)
from mlx_vgb.generate import load, stream_generate


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("bad") / "m", seed=3)


@pytest.mark.parametrize("bad", [math.nan, -0.5, math.inf])
def test_verifier_returning_nan_negative_or_inf(bad):
    lm = toy.TabularLM.uniform(3)
    v = FunctionVerifier(lambda p: bad if len(p) == 2 else 1.0)
    with pytest.raises(VerifierError, match="must be finite and >= 0"):
        VGB(horizon=4, choice=Enumerate()).sample(lm, v, seed=0)


def test_verifier_returning_wrong_shape():
    lm = toy.TabularLM.uniform(3)

    class Bad(FunctionVerifier):
        def value(self, prefixes):
            return np.ones(len(prefixes) + 1)

    with pytest.raises(VerifierError, match="one value per prefix"):
        VGB(horizon=4).sample(lm, Bad(lambda p: 1.0), seed=0)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(horizon=0), "horizon"),
        (dict(drift=0.0), "drift"),
        (dict(drift=2.0), "drift"),
        (dict(temp=-1.0), "temp"),
    ],
)
def test_bad_sampler_settings(kw, msg):
    lm = toy.TabularLM.uniform(2)
    with pytest.raises(ConfigError, match=msg):
        VGB(**kw).sample(lm, FunctionVerifier(lambda p: 1.0))


def test_bad_candidates_and_blocks():
    with pytest.raises(ConfigError, match="K must be"):
        Candidates(0)
    with pytest.raises(ConfigError, match="block length"):
        Blocks(0)
    lm = toy.TabularLM.uniform(2)
    with pytest.raises(ConfigError, match="single-token actions"):
        VGB(horizon=4, actions=Blocks(2), choice=Enumerate()).sample(
            lm, FunctionVerifier(lambda p: 1.0)
        )


def test_root_dead_end_raises_inner_dead_end_backtracks():
    lm = toy.TabularLM.uniform(2)
    with pytest.raises(DeadEndError, match="zero weight"):
        VGB(horizon=3, choice=Enumerate()).sample(lm, FunctionVerifier(lambda p: 0.0))
    # a sampled rule proves nothing: after max_root_retries empty draws the run ends unfinished
    r = VGB(horizon=3, choice=Candidates(2)).sample(lm, FunctionVerifier(lambda p: 0.0))
    assert not r.reached_leaf and r.finish_reason == "dead-end"
    # everything under token 0 is dead at depth 2: the walk leaves by backtracking
    v = FunctionVerifier(lambda p: 0.0 if p[:1] == (0,) and len(p) >= 2 else 1.0)
    r = VGB(horizon=3, choice=Enumerate()).sample(lm, v, seed=1)
    assert r.reached_leaf and r.tokens[0] == 1


def test_budgets_return_best_effort_flagged_unfinished():
    lm = toy.TabularLM.uniform(3)
    v = FunctionVerifier(
        lambda p: 1.0 if len(p) < 6 else 0.0, lambda y: 1.0 if y[0] == 0 and y[1] == 0 else 0.0
    )
    r = VGB(horizon=8, choice=Enumerate(), max_steps=50).sample(lm, v, seed=0)
    assert not r.reached_leaf and r.finish_reason == "budget" and r.stats.steps == 50
    r = VGB(horizon=8, choice=Candidates(2), max_forward_tokens=5).sample(lm, v, seed=0)
    assert not r.reached_leaf and r.finish_reason == "budget"


def test_empty_prompt(folder):
    model, tok = load(str(folder))
    with pytest.raises(ConfigError, match="prompt is empty"):
        list(stream_generate(model, tok, "   "))
    from mlx_vgb.lm import MLXLanguageModel

    with pytest.raises(EmptyPromptError):
        VGB(horizon=3).sample(MLXLanguageModel(model, tok), FunctionVerifier(lambda p: 1.0), ())


def test_odd_unicode_prompt_and_verifier(folder):
    model, tok = load(str(folder))
    prompt = "Zalgo: Z̸̢͓a̵l̴g̶o, RTL: שלום, emoji: 🐈‍⬛, NUL-ish: \u2028\ufeff"
    last = list(
        stream_generate(model, tok, prompt, verifier="forbid:🐈|ש", max_tokens=6, block=2, seed=0)
    )[-1]
    assert last.result is not None and "🐈" not in last.text


def test_prompt_longer_than_context(tmp_path):
    small = tiny_model_folder(tmp_path / "small", seed=1, context=32)
    model, tok = load(str(small))
    with pytest.raises(ConfigError, match="context"):
        list(stream_generate(model, tok, "x" * 40, max_tokens=4))


def test_head_for_another_model_cannot_be_bridged(folder, tmp_path):
    import mlx.core as mx

    from mlx_vgb.verifier_format import HeadConfig, ValueHead, VerifierConfig, save_verifier

    hc = HeadConfig(type="mlp", dims=[64, 1], activation="relu", output="sigmoid")
    head = ValueHead(hc)
    mx.eval(head.parameters())
    save_verifier(tmp_path / "v", VerifierConfig(head=hc), head)
    model, tok = load(str(folder))
    with pytest.raises(ConfigError, match="hidden size 64 but the generator's is 32"):
        list(stream_generate(model, tok, "Hi", verifier=f"head:{tmp_path / 'v'}"))


def test_corrupt_or_truncated_weights(folder, tmp_path):
    import shutil

    bad = tmp_path / "trunc"
    shutil.copytree(folder, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cannot load the model"):
        load(str(bad))


def test_hub_id_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hub|not found"):
        load("no-such-org/no-such-model-xyz")


# -- the command line: one message, a nonzero exit, never a traceback -----------------------


@pytest.mark.parametrize(
    "verifier, words",
    [
        ("head:{empty}", "no verifier_config.json"),
        ("model:{empty}", "no verifier_config.json"),
        ("no-letter:e,alpha=abc", "alpha must be a number"),
        ("no-letter:", "exactly one letter"),
        ("no-letter:e,beta=2", "unknown option"),
        ("unit-tests:{tests}", "line 1"),
        ("unit-tests:{missing}", "no such test file"),
    ],
)
def test_cli_bad_verifier_specs_exit_with_one_message(folder, tmp_path, capsys, verifier, words):
    from mlx_vgb.generate import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "tests.py").write_text("assert f(1) ==\n")
    spec = verifier.format(
        empty=tmp_path / "empty", tests=tmp_path / "tests.py", missing=tmp_path / "nope.py"
    )
    with pytest.raises(SystemExit) as e:
        main(["--model", str(folder), "--verifier", spec, "--max-tokens", "4", "-p", "Hi"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # one paragraph


def test_corrupt_config_names_the_file(folder, tmp_path):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        load(str(bad))


def test_ctrl_c_prints_the_partial_text_and_exits_130(folder, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    # a walk that cannot end (every leaf fails, 20 ms a verifier call), then SIGINT
    started = tmp_path / "walk-started"
    cmd = [
        sys.executable,
        "-m",
        "mlx_vgb.cli",
        "generate",
        "--model",
        str(folder),
        "--verifier",
        "tests.faulty_verifiers:slow_never_done",
        "--max-tokens",
        "16",
        "--choice",
        "self-normalized",
        "-p",
        "Write a long story.",
    ]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MLX_VGB_TEST_STARTED": str(started)},
        # Ctrl-C as in a terminal: a runner started in the background (`cmd &` without job
        # control, nohup) hands its children SIGINT ignored, and Python then never raises
        # KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # SIGINT once the walk runs: sent during the imports (slow on a loaded machine) it can be
    # swallowed by a library's bare except there, and then nothing stops the walk
    deadline = time.monotonic() + 180
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), proc.communicate(timeout=60)
    time.sleep(2)  # some walk steps: text to print
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert out.strip()  # the text so far
