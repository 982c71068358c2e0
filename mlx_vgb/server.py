"""`mlx-vgb server`: an OpenAI-compatible HTTP server (in the shape of ``mlx_lm.server``) whose
completions are sampled by VGB or a baseline under a verifier.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(``"stream": true``: server-sent events), ``GET /health``. Extra request fields choose the walk:
``sampler``, ``verifier`` (the ``--verifier`` grammar), ``candidates`` (K; alias ``k``),
``drift``, ``block``, ``choice``, ``max_steps``, ``max_forward_tokens``, ``seed``, ``top_k``;
the response carries the walk's stats under ``vgb``. See docs/server.md; the wire format
(requests, completion objects, what a stream commits) is ``mlx_vgb.openai_api``.

Streaming and backtracking: ``choices[0].delta.content`` (``text`` for completions) only ever
carries *committed* text, text no later event can erase, so a client that only appends ends
with the right final text. A walk that can move up (every sampler but ``plain``) commits its
text when it ends; ``plain`` commits as it goes. Every walk event is also sent, unless
``"vgb_events": false``, as a chunk with empty choices' content and a top-level ``vgb`` field
``{"event": "append" | "backtrack", "erase": N, "append": "...", "step", "depth"}``: drop the
last N characters of the live text, then add ``append``. The last chunk's ``vgb`` holds the
final ``text``, the verdict and the stats.

Concurrency: every request's walk is a job of one batched engine (``mlx_vgb.engine``): the
walks running at the same time take turns on the host and share one batched forward per engine
step, and a request that arrives mid-run joins at the next step. A walk's output does not
depend on the others (the same seed gives the same text alone or among concurrent requests, up
to float rounding). ``GET /health`` reports the engine's counters (``shared``: forwards that
served more than one walk).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .dist import add_row_memory_arg, apply_row_memory
from .errors import VGBError
from .models import MODEL_HELP
from .openai_api import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLER,
    DEFAULT_VERIFIER,
    Committed,
    RequestError,
    WalkRequest,
    chat_ids,
    choice_obj,
    envelope,
    finish_reason,
    parse_request,
    usage,
    walk_info,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_LOADED_MODELS = 2

log = logging.getLogger("mlx_vgb.server")


# -- the engine ---------------------------------------------------------------------------------

_END = object()


class Job:
    """A submitted request: the engine puts ``GenerationResponse``s (then ``_END``, or an
    exception) on ``out``; ``cancel()`` stops its walk at the next event."""

    def __init__(self, req: WalkRequest):
        self.req = req
        self.out: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.prompt_tokens = 0

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """Runs every request's walk as a job of one ``mlx_vgb.engine.Engine``: walks that run at
    the same time share batched forwards, and a request that arrives mid-run joins the batch at
    the next engine step. Models load inside a job (one job runs at a time), kept LRU."""

    def __init__(
        self,
        model: str | None,
        load: Callable | None = None,
        stream_generate: Callable | None = None,
        max_models: int = MAX_LOADED_MODELS,
    ):
        if load is None or stream_generate is None:
            import importlib

            gen = importlib.import_module("mlx_vgb.generate")
            load, stream_generate = load or gen.load, stream_generate or gen.stream_generate
        from .engine import Engine as BatchEngine

        self._load, self._stream_generate = load, stream_generate
        self.model = model
        self.model_id = model or "mlx-vgb-default"
        self.max_models = max_models
        self._models: collections.OrderedDict = collections.OrderedDict()
        self.batch = BatchEngine()
        self.served = 0

    def preload(self) -> None:
        """Load the served model now; raises its ConfigError."""
        self.batch.submit(lambda: self._get_model(None)).result()

    def submit(self, req: WalkRequest) -> Job:
        job = Job(req)
        self.batch.submit(lambda: self._walk(job))
        return job

    def model_ids(self) -> list[str]:
        return [self.model_id] + [k for k in list(self._models) if k not in (None, self.model_id)]

    def stats(self) -> dict:
        """The batched engine's counters (``GET /health``)."""
        return dict(vars(self.batch.stats), served=self.served)

    # inside a job (one job runs at a time) ------------------------------------------------
    def _get_model(self, name: str | None):
        key = None if name in (None, "", self.model_id, "default") else name
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        pair = self._load(self.model if key is None else key)
        self._models[key] = pair
        while len(self._models) > self.max_models:
            old = next(k for k in self._models if k is not None)
            del self._models[old]
        return pair

    def _walk(self, job: Job) -> None:
        """One request's walk: its events onto ``job.out``, then ``_END`` (or the error)."""
        if job.cancelled.is_set():
            job.out.put(_END)
            return
        gen = None
        try:
            gen = self._open(job)
            for resp in gen:
                job.out.put(resp)
                if resp.result is not None:
                    self.served += 1
                    break
                if job.cancelled.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - the request's error, not the server's
            job.out.put(e)
            return
        finally:
            _close(gen)
        job.out.put(_END)

    def _open(self, job: Job):
        """A request -> its walk (a ``stream_generate`` generator), on the engine thread."""
        req = job.req
        model, tokenizer = self._get_model(req.model)
        kw = dict(req.kwargs)
        if req.chat:
            msgs = req.messages
            users = [m for m in msgs if m["role"] == "user"]
            systems = [m for m in msgs if m["role"] == "system"]
            if len(users) == 1 and msgs[-1] is users[0] and len(systems) + 1 == len(msgs):
                # one question: the prompt text travels (verifiers bridged through text see it)
                prompt = users[0]["content"]
                kw["system_prompt"] = systems[0]["content"] if systems else None
                ids = chat_ids(tokenizer, msgs)
            else:
                prompt = ids = chat_ids(tokenizer, msgs)
        else:
            prompt = req.prompt
            kw["chat_template"] = False
            ids = list(tokenizer.encode(prompt))
        job.prompt_tokens = len(ids)
        return self._stream_generate(model, tokenizer, prompt, **kw)


def _close(gen) -> None:
    if gen is not None:
        try:
            gen.close()
        except Exception:  # pragma: no cover - closing must not stop the engine
            log.exception("closing a walk")


# -- HTTP ---------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server_version = "mlx-vgb"
    engine: Engine  # set by make_server
    defaults: dict

    def log_message(self, fmt, *args):  # through logging, not stderr
        log.info("%s %s", self.address_string(), fmt % args)

    def _json(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            now = int(time.time())
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": now, "owned_by": "mlx-vgb"}
                        for m in self.engine.model_ids()
                    ],
                },
            )
        elif path == "/health":
            self._json(200, {"status": "ok", "engine": self.engine.stats()})
        else:
            self._error(
                404,
                f"no endpoint {self.path}; see /v1/models, /v1/completions, /v1/chat/completions",
                "not_found",
            )

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no endpoint {self.path}", "not_found")
            return
        try:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            self._error(400, f"the request body is not JSON ({e})")
            return
        try:
            req = parse_request(body, path.endswith("chat/completions"), self.defaults)
        except RequestError as e:
            self._error(400, str(e))
            return
        job = self.engine.submit(req)
        first = job.out.get()
        if isinstance(first, BaseException):  # bad settings surface at the walk's start
            if isinstance(first, VGBError):
                self._error(400, str(first))
            else:
                log.error("request failed", exc_info=first)
                self._error(
                    500, f"internal error ({type(first).__name__}: {first})", "server_error"
                )
            return
        try:
            if req.stream:
                self._stream(job, first)
            else:
                self._complete(job, first)
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            job.cancel()

    def _responses(self, job: Job, first):
        item = first
        while item is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
            item = job.out.get()

    def _complete(self, job: Job, first) -> None:
        last = None
        try:
            for last in self._responses(job, first):
                pass
        except VGBError as e:  # a verifier that fails midway: the request's fault
            self._error(400, str(e))
            return
        except Exception as e:  # noqa: BLE001
            log.error("walk failed", exc_info=e)
            self._error(500, f"internal error ({type(e).__name__}: {e})", "server_error")
            return
        req = job.req
        self._json(
            200,
            envelope(
                req,
                self.engine,
                [choice_obj(req, last.text, finish_reason(last.result))],
                usage=usage(job, last),
                vgb=walk_info(req, last),
            ),
        )

    def _stream(self, job: Job, first) -> None:
        req = job.req
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        committed = Committed(str(req.kwargs.get("sampler", DEFAULT_SAMPLER)))

        def send(obj) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        if req.chat:
            send(envelope(req, self.engine, [choice_obj(req, None, None, role=True)]))
        try:
            for resp in self._responses(job, first):
                final = resp.result is not None
                new = committed.advance(resp.text, final)
                if final:
                    send(
                        envelope(
                            req,
                            self.engine,
                            [choice_obj(req, new, finish_reason(resp.result))],
                            usage=usage(job, resp),
                            vgb=dict(walk_info(req, resp), event="done", text=resp.text),
                        )
                    )
                    break
                ev = None
                if req.events:
                    ev = {
                        "event": type(resp.event).__name__.lower(),
                        "erase": len(resp.erased),
                        "append": resp.appended,
                        "step": resp.step,
                        "depth": resp.depth,
                    }
                if new or ev:
                    send(
                        envelope(
                            req,
                            self.engine,
                            [choice_obj(req, new, None)],
                            **({"vgb": ev} if ev else {}),
                        )
                    )
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # noqa: BLE001 - the stream has started: an error event
            if not isinstance(e, VGBError):
                log.error("walk failed", exc_info=e)
            send(
                {
                    "error": {
                        "message": str(e)
                        if isinstance(e, VGBError)
                        else f"internal error ({type(e).__name__}: {e})",
                        "type": "invalid_request_error"
                        if isinstance(e, VGBError)
                        else "server_error",
                    }
                }
            )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(
    engine: Engine, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, defaults: dict | None = None
) -> ThreadingHTTPServer:
    """A ``ThreadingHTTPServer`` serving ``engine`` (``serve_forever()`` to run it)."""
    handler = type("VGBHandler", (Handler,), {"engine": engine, "defaults": dict(defaults or {})})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-vgb server",
        description="An OpenAI-compatible HTTP server whose completions are VGB walks.",
    )
    p.add_argument(
        "--model",
        default=None,
        help=MODEL_HELP,
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--sampler",
        default=DEFAULT_SAMPLER,
        help=f"default sampler of requests that name none ({DEFAULT_SAMPLER})",
    )
    p.add_argument(
        "--verifier",
        default=DEFAULT_VERIFIER,
        help="default verifier spec of requests that name none (none)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"default max_tokens (H) of requests ({DEFAULT_MAX_TOKENS})",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_row_memory_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = setup_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(name)s: %(message)s")
    engine = Engine(args.model)
    defaults = {"sampler": args.sampler, "verifier": args.verifier, "max_tokens": args.max_tokens}
    try:
        from .registry import parse_verifier

        parse_verifier(args.verifier)
        apply_row_memory(args)
        engine.preload()
        server = make_server(engine, args.host, args.port, defaults)
    except (VGBError, OSError) as e:
        print(f"mlx-vgb server: error: {e}", file=sys.stderr)
        sys.exit(1)
    host, port = server.server_address[:2]
    print(
        f"mlx-vgb server: model {engine.model_id}; serving on http://{host}:{port}/v1", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()
        sys.stderr.flush()
        import os

        os._exit(0)  # see mlx_vgb.app.cli: MLX used from a worker thread can abort at exit


if __name__ == "__main__":
    main()
