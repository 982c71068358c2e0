"""Runs behind the web page: settings from the form, loaded models, one run per session, cancel.

Only the public API is used (``mlx_vgb.generate.load`` / ``stream_generate``). Model work of all
sessions runs as jobs of one batched engine (``ModelWorker``): concurrent runs share batched
forwards, take turns on the host, and never call MLX from two threads at once.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import queue
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
    """All model work (loading, every walk) runs as jobs of one batched engine
    (``mlx_vgb.engine``): the walks of all sessions, and the two of compare mode, share one
    batched forward per engine step, each timed apart (``Engine.job_seconds``). One job runs
    at a time, so MLX is never called from two threads at once.
    """

    def __init__(self):
        from ..engine import Engine

        self.engine = Engine()

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` as an engine job; its result (or its error)."""
        return self.engine.submit(lambda: fn(*args, **kwargs)).result()

    def stream(self, make: Callable[[], Iterator], stop: Callable[[], bool], out, key) -> None:
        """Run the walk ``make()`` as an engine job: ``(key, (response, own seconds))`` for each
        event on ``out``, then ``(key, _END)``; an error goes on ``out`` as ``(key, error)``. The
        walk stops (and is closed) at the first event after ``stop()`` is true."""

        def job():
            gen = None
            try:
                gen = make()
                for resp in gen:
                    out.put((key, (resp, self.engine.job_seconds())))
                    if stop():
                        break
            except BaseException as e:  # noqa: BLE001 - handed to the page
                out.put((key, e))
                return
            finally:
                if gen is not None:
                    try:
                        gen.close()  # stops the walk, drops its caches
                    except Exception:  # pragma: no cover - closing must not hide the real error
                        log.exception("closing a stream")
            out.put((key, _END))

        self.engine.submit(job)


_END = object()


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
        stopped = threading.Event()
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
            events: queue.Queue = queue.Queue()
            for i, (s, view) in enumerate(zip(samplers, run.views)):
                view.decode = decode
                # every run is scored by the selected verifier (plain too: its verdict)
                kw = settings.stream_kwargs(s, spec)
                if traced:
                    kw["trace"] = view.add_trace
                self.worker.stream(
                    lambda kw=kw: self.stream_generate(model, tokenizer, settings.prompt, **kw),
                    lambda: stopped.is_set() or run.cancel.is_set(),
                    events,
                    i,
                )
            yield run.views, "running…"
            yield from self._pump(run, events)
        except GeneratorExit:  # Gradio stopped iterating: the page's Cancel, or a closed tab
            run.cancel.set()
            raise
        finally:
            stopped.set()  # the walks still going stop at their next event
            self.registry.end(session, run)

    def _pump(self, run: SessionRun, events: queue.Queue):
        views = run.views
        live = set(range(len(views)))
        last = 0.0
        while live:
            if run.cancel.is_set():
                for v in views:
                    if not v.done:
                        v.cancelled = True
                yield views, "cancelled"
                return
            try:
                item = events.get(timeout=0.05)
            except queue.Empty:
                continue
            changed = False
            while item is not None:
                i, got = item
                if got is _END:
                    live.discard(i)
                elif isinstance(got, BaseException):
                    raise got
                else:
                    resp, seconds = got
                    views[i].busy_s = seconds  # each walk's own time, though they share forwards
                    views[i].update(resp)
                    changed = True
                    if views[i].done:
                        live.discard(i)
                try:
                    item = events.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            if changed and (now - last >= self.update_interval_s or not live):
                last = now
                yield views, "running…" if live else status_line(views)
        yield views, status_line(views)


def status_line(views: list[WalkView]) -> str:
    """ "done: vgb passes, plain (baseline) fails"."""
    return "done: " + ", ".join(f"{v.label} {v.verdict()[1]}" for v in views)
