"""Runs behind the web page: settings from the form, loaded models, one run per session, cancel.

Only the public API is used (``mlx_vgb.generate.load`` / ``stream_generate``). Model work of all
sessions runs on one ``ModelWorker`` thread a walk event at a time, so concurrent runs interleave
(first come, first served) instead of calling MLX from several threads at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import VGBError
from ..registry import (
    FunctionSpec,
)
from .render import WalkView
from .settings import MAX_LOADED_MODELS, RunSettings
from .userfiles import _installed_dirs, reload_if_changed

log = logging.getLogger("mlx_vgb.app")


class ModelWorker:
    """The one thread that runs all model work (loading, every walk step, closing a stream).

    MLX binds lazily evaluated arrays to the stream of the thread that made them, so a run must
    not hop between Gradio's worker threads; and one thread means runs of different sessions
    interleave a walk event at a time, first come first served, never calling MLX at once.
    """

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mlx-vgb-model")

    def call(self, fn: Callable, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result()


class ModelCache:
    """Loaded (model, tokenizer) pairs by spec; the default stays, others are evicted LRU."""

    def __init__(self, load: Callable, default: str | None, max_models: int = MAX_LOADED_MODELS):
        self._load, self.default = load, default
        self.max_models = max_models
        self._models: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: str | None):
        key = spec if spec is not None else "<default>"
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            pair = self._load(spec)
            self._models[key] = pair
            while len(self._models) > self.max_models:
                old = next(k for k in self._models if k != self._default_key())
                del self._models[old]
            return pair

    def _default_key(self):
        return self.default if self.default is not None else "<default>"

    def has(self, spec: str | None) -> bool:
        with self._lock:
            return (spec if spec is not None else "<default>") in self._models

    def loaded(self) -> list[str]:
        return list(self._models)


@dataclass
class SessionRun:
    cancel: threading.Event = field(default_factory=threading.Event)
    views: list[WalkView] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class RunRegistry:
    """The run of each browser session (one at a time per session) and their cancel flags."""

    def __init__(self):
        self._runs: dict[str, SessionRun] = {}
        self._last: dict[str, SessionRun] = {}  # each session's latest run, ended or not
        self._lock = threading.Lock()
        self.finished = 0
        self.cancelled = 0

    def start(self, session: str) -> SessionRun:
        with self._lock:
            old = self._runs.get(session)
            if old is not None:  # a new run replaces the session's old one
                old.cancel.set()
            run = SessionRun()
            self._runs[session] = self._last[session] = run
            return run

    def end(self, session: str, run: SessionRun) -> None:
        with self._lock:
            if self._runs.get(session) is run:
                del self._runs[session]
            self.finished += 1
            if run.cancel.is_set():
                self.cancelled += 1

    def cancel(self, session: str) -> SessionRun | None:
        """Flag the session's run to stop; returns it (or the session's last run if Gradio has
        already stopped it), None if the session never ran."""
        with self._lock:
            run = self._runs.get(session) or self._last.get(session)
        if run is not None:
            run.cancel.set()
        return run

    def last(self, session: str) -> SessionRun | None:
        """The session's latest run, ended or not."""
        with self._lock:
            return self._last.get(session)

    def active(self) -> int:
        with self._lock:
            return len(self._runs)


def user_message(e: BaseException) -> str:
    """What the page shows for an exception: our errors' messages; a crash in the user's own
    verifier function is named as such; others without traceback."""
    if isinstance(e, VGBError):
        return str(e)
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        last = frames[-1]
        user = not last.filename.startswith(_installed_dirs())
        if user and any("verifiers.py" in f.filename for f in frames):
            return (
                f"your verifier function raised {type(e).__name__}: {e} "
                f"({os.path.basename(last.filename)}, line {last.lineno})"
            )
    log.exception("run failed")
    return f"internal error ({type(e).__name__}: {e}); the server log has the details"


class Runner:
    """Streams one run (VGB, and the baseline in compare mode) as a sequence of views."""

    def __init__(
        self, models: ModelCache, stream_generate: Callable, update_interval_s: float = 0.1
    ):
        self.models, self.stream_generate = models, stream_generate
        self.update_interval_s = update_interval_s
        self.worker = ModelWorker()
        self.registry = RunRegistry()

    def run(self, settings: RunSettings, session: str) -> Iterator[tuple[list[WalkView], str]]:
        """Yield (views, status line) as the run goes; raises VGBError on bad settings."""
        run = self.registry.start(session)
        streams: list = []
        try:
            settings.check()
            spec = settings.verifier_settings()
            model_spec = settings.model_spec(self.models.default)
            if isinstance(spec, FunctionSpec):
                self.worker.call(reload_if_changed, spec.target)
            labels = [settings.sampler]
            if settings.compare:
                labels.append(settings.baseline + " (baseline)")
            vstr = spec.to_string()
            run.views = [WalkView(label=lab, verifier=vstr) for lab in labels]
            if not self.models.has(model_spec):
                yield run.views, f"loading the model {model_spec or '(default)'}…"
            model, tokenizer = self.worker.call(self.models.get, model_spec)
            decode = getattr(tokenizer, "decode", None) or str
            traced = "trace" in inspect.signature(self.stream_generate).parameters
            samplers = [settings.sampler] + ([settings.baseline] if settings.compare else [])
            for s, view in zip(samplers, run.views):
                view.decode = decode
                # every run is scored by the selected verifier (plain too: its verdict)
                kw = settings.stream_kwargs(s, spec)
                if traced:
                    kw["trace"] = view.add_trace
                streams.append(
                    self.worker.call(self.stream_generate, model, tokenizer, settings.prompt, **kw)
                )
            yield run.views, "running…"
            yield from self._pump(run, streams)
        except GeneratorExit:  # Gradio stopped iterating: the page's Cancel, or a closed tab
            run.cancel.set()
            raise
        finally:
            for g in streams:  # closing a stream stops its walk and drops its caches
                try:
                    self.worker.call(g.close)
                except Exception:  # pragma: no cover - closing must not hide the real error
                    log.exception("closing a stream")
            streams.clear()
            self.registry.end(session, run)

    def _pump(self, run: SessionRun, streams: list):
        views = run.views
        live = list(range(len(streams)))
        last = 0.0
        while live:
            changed = False
            for i in list(live):
                if run.cancel.is_set():
                    break
                resp, took = self.worker.call(_timed_next, streams[i])
                views[i].busy_s += took  # each run's own time, though they interleave
                if resp is None:
                    live.remove(i)
                    continue
                views[i].update(resp)
                changed = True
                if views[i].done:
                    live.remove(i)
            if run.cancel.is_set():
                for v in views:
                    if not v.done:
                        v.cancelled = True
                yield views, "cancelled"
                return
            now = time.monotonic()
            if changed and (now - last >= self.update_interval_s or not live):
                last = now
                yield views, "running…" if live else status_line(views)
        yield views, status_line(views)


def _timed_next(stream):
    t0 = time.perf_counter()
    resp = next(stream, None)
    return resp, time.perf_counter() - t0


def status_line(views: list[WalkView]) -> str:
    """ "done: vgb passes, plain (baseline) fails"."""
    return "done: " + ", ".join(f"{v.label} {v.verdict()[1]}" for v in views)
