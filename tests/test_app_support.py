"""Helpers for the web-app tests: a tiny random MLX model folder, a running app, a free port.

(A module named test_* so that it sits with the app tests; it holds no tests itself.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ALPHABET = list("abcdefghijklmnopqrstuvwxyz .,!?'\n")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_model_folder(path: str | Path, seed: int = 0) -> Path:
    """An mlx-lm model folder (config.json, model.safetensors, tokenizer files) holding a tiny
    random llama with a character-level tokenizer; ``mlx_lm.load`` reads it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS + ALPHABET)}
    model = tiny_llama(seed=seed, vocab=len(vocab), hidden=32, layers=2, context=1024)
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    args = model.args
    config = {
        "model_type": "llama",
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_hidden_layers,
        "intermediate_size": args.intermediate_size,
        "num_attention_heads": args.num_attention_heads,
        "num_key_value_heads": args.num_key_value_heads,
        "rms_norm_eps": args.rms_norm_eps,
        "vocab_size": args.vocab_size,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
        "eos_token_id": 0,
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=" "))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|endoftext|>",
                "bos_token": None,
                "unk_token": " ",
                "chat_template": CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False,
            },
            indent=1,
        )
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            tail = Path(proc.log_path).read_text()[-3000:] if hasattr(proc, "log_path") else ""
            raise RuntimeError(
                f"the app exited with code {proc.returncode} before serving:\n{tail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing served at {url} after {timeout_s:.0f} s")


def launch_app_process(model_dir: Path | str | None, port: int, *extra: str) -> subprocess.Popen:
    """``mlx-vgb app --model DIR --port PORT`` in a subprocess (the real CLI path); no
    ``--model`` (the embedded default) when ``model_dir`` is None."""
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    log = tempfile.NamedTemporaryFile("w+", prefix="mlx-vgb-app-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_vgb.cli",
            "app",
            *([] if model_dir is None else ["--model", str(model_dir)]),
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = log.name  # read it when something fails; a pipe could fill and block the app
    return proc


@contextlib.contextmanager
def running_app(model_dir: Path | str | None, *extra: str, timeout_s: float = 90.0):
    """``mlx-vgb app`` serving on a free loopback port: yields (url, process); stops it after."""
    port = free_port()
    proc = launch_app_process(model_dir, port, *extra)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, timeout_s, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
