"""`mlx-vgb server` end to end: the real CLI in a subprocess on a tiny random model, driven by the
official `openai` client (completions and chat, streaming and not, concurrent requests) and by
plain HTTP for the errors (400 with a message)."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from test_app_support import free_port, save_tiny_model_folder, wait_http  # noqa: E402

LETTERS = dict(
    verifier="no-letter:e,alpha=0.3",
    sampler="vgb",
    choice="self-normalized",
    candidates=8,
    max_steps=2000,
    seed=0,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    log = tempfile.NamedTemporaryFile("w+", prefix="mlx-vgb-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_vgb.cli",
            "server",
            "--model",
            str(model),
            "--port",
            str(port),
            "--max-tokens",
            "24",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", 90, proc)
        yield url, str(model)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


def post(server, path, body):
    req = urllib.request.Request(
        server[0] + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(server):
    with urllib.request.urlopen(server[0] + "/health", timeout=30) as r:
        return json.loads(r.read())


def test_models_lists_the_served_model(server):
    ids = [m.id for m in client(server).models.list()]
    assert ids == [server[1]]


def test_chat_completion_is_a_vgb_walk_with_its_stats(server):
    r = client(server).chat.completions.create(
        model=server[1],
        messages=[{"role": "user", "content": "Write a story."}],
        max_tokens=24,
        extra_body=LETTERS,
    )
    text = r.choices[0].message.content
    vgb = r.model_extra["vgb"]
    assert vgb["sampler"] == "vgb" and vgb["verdict"] == "passes" and vgb["reached_leaf"]
    assert vgb["stats"]["backtracks"] > 0 and vgb["stats"]["steps"] > 0
    assert "e" not in text.lower()
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_streaming_appends_only_committed_text_and_shows_the_walk(server):
    chunks = list(
        client(server).chat.completions.create(
            model=server[1],
            messages=[{"role": "user", "content": "Write a story."}],
            max_tokens=24,
            stream=True,
            extra_body=LETTERS,
        )
    )
    appended = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    extra = [c.model_extra.get("vgb") for c in chunks if c.model_extra.get("vgb")]
    final = extra[-1]
    assert final["event"] == "done" and appended == final["text"]  # append-only is right
    # the walk's events replay to the same text: erase N characters, then append
    live = ""
    for ev in extra[:-1]:
        live = live[: len(live) - ev["erase"]] + ev["append"]
    assert live == final["text"] and any(ev["event"] == "backtrack" for ev in extra[:-1])
    alone = client(server).chat.completions.create(
        model=server[1],
        messages=[{"role": "user", "content": "Write a story."}],
        max_tokens=24,
        extra_body=LETTERS,
    )
    assert appended == alone.choices[0].message.content  # same seed, same walk


def test_plain_streams_its_text_as_it_goes(server):
    chunks = list(
        client(server).completions.create(
            model=server[1],
            prompt="Once upon a time",
            max_tokens=16,
            stream=True,
            extra_body=dict(sampler="plain", seed=3),
        )
    )
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(pieces) > 3  # live, not one piece at the end
    done = client(server).completions.create(
        model=server[1],
        prompt="Once upon a time",
        max_tokens=16,
        extra_body=dict(sampler="plain", seed=3),
    )
    assert "".join(pieces) == done.choices[0].text
    assert done.model_extra["vgb"]["verdict"] == "complete"


def test_concurrent_requests_each_get_their_own_walk(server):
    seeds = [0, 1, 2, 3]

    def ask(seed):
        r = client(server).chat.completions.create(
            model=server[1],
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=24,
            extra_body=dict(LETTERS, seed=seed),
        )
        return r.choices[0].message.content

    alone = {s: ask(s) for s in seeds}
    shared = health(server)["engine"]["shared"]
    got = {}
    threads = [threading.Thread(target=lambda s=s: got.__setitem__(s, ask(s))) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == alone and len(set(alone.values())) > 1
    # the concurrent walks shared batched forwards (the requests one at a time did not)
    assert health(server)["engine"]["shared"] > shared


@pytest.mark.parametrize(
    "body, words",
    [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "user", "content": "x"}], sampler="nope"), "unknown sampler"),
        (dict(messages=[{"role": "user", "content": "x"}], verifier="regex:("), "bad regex"),
        (dict(messages=[{"role": "user", "content": "x"}], candidates=0), "'candidates'"),
        (dict(messages=[{"role": "user", "content": "x"}], temperature=-1), "'temperature'"),
        (dict(messages=[{"role": "user", "content": "x"}], n=2), "'n' must be 1"),
        (dict(messages=[{"role": "user", "content": "x"}], block="lines"), "block must be"),
    ],
)
def test_a_bad_request_gets_a_400_with_a_message(server, body, words):
    status, out = post(server, "/v1/chat/completions", body)
    assert status == 400 and words in out["error"]["message"], out


def test_the_openai_client_sees_a_bad_request_error(server):
    with pytest.raises(openai.BadRequestError, match="unknown verifier"):
        client(server).completions.create(
            model=server[1], prompt="x", extra_body=dict(verifier="nonsense")
        )


def test_the_server_listens_on_loopback_by_default():
    from mlx_vgb.server import DEFAULT_HOST, setup_arg_parser

    assert setup_arg_parser().parse_args([]).host == DEFAULT_HOST == "127.0.0.1"
