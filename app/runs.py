"""Runs behind the web page: settings from the form, loaded models, one run per session, cancel.

Only the public API is used (``mlx_vgb.generate.load`` / ``stream_generate``). Model work of all
sessions runs on one ``ModelWorker`` thread a walk event at a time, so concurrent runs interleave
(first come, first served) instead of calling MLX from several threads at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import ConfigError, VGBError
from ..registry import (
    ForbidSpec,
    FunctionSpec,
    HeadSpec,
    ModelSpec,
    NoLetterSpec,
    NoVerifierSpec,
    PythonSyntaxSpec,
    RegexSpec,
    UnitTestsSpec,
    VerifierSpec,
    parse_block,
)
from .render import WalkView

log = logging.getLogger("mlx_vgb.app")

GENERATOR_DEFAULT = "default"
GENERATOR_FOLDER = "local MLX folder"
GENERATOR_HUB = "hub id"
GENERATORS = (GENERATOR_DEFAULT, GENERATOR_FOLDER, GENERATOR_HUB)

VERIFIERS = ("none", "no-letter", "regex", "forbid", "python-syntax", "unit-tests", "head",
             "model", "python function")
BASELINES = ("plain", "action-rs")
BLOCKS = ("token", "line", "2", "4", "8", "16")
MAX_LOADED_MODELS = 2


@dataclass
class RunSettings:
    """Everything the form sends for one run."""

    prompt: str = ""
    generator: str = GENERATOR_DEFAULT
    model_path: str = ""
    verifier: str = "none"
    letter: str = "e"
    alpha: float = 0.3
    pattern: str = ""
    words: str = ""
    tests: str = ""
    verifier_path: str = ""
    function: str = ""
    sampler: str = "vgb"
    block: str = "token"
    candidates: int = 8
    temp: float = 1.0
    max_tokens: int = 64
    max_steps: int = 0  # 0: no limit
    seed: int = 0
    drift: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    system_prompt: str = ""
    compare: bool = False
    baseline: str = "action-rs"

    def block_value(self):
        return parse_block(self.block)

    def model_spec(self, default: str | None) -> str | None:
        if self.generator == GENERATOR_DEFAULT:
            return default
        path = (self.model_path or "").strip()
        if not path:
            raise ConfigError(f"generator '{self.generator}': type the folder path or hub id "
                              "in the model box")
        if self.generator == GENERATOR_FOLDER and not os.path.isdir(os.path.expanduser(path)):
            raise ConfigError(f"no folder at {path!r}: give an MLX model folder (convert other "
                              "formats with `mlx-vgb convert`)")
        return path

    def verifier_settings(self) -> VerifierSpec:
        """The typed verifier setting of these fields (``mlx_vgb.registry``)."""
        kind = self.verifier
        if kind == "none":
            return NoVerifierSpec()
        if kind == "no-letter":
            letter = (self.letter or "").strip()
            if len(letter) != 1:
                raise ConfigError(f"letter avoidance needs exactly one letter, got {letter!r}")
            if self.alpha is None or not 0 < float(self.alpha) <= 1:
                raise ConfigError(f"letter avoidance: alpha must be in (0, 1], got {self.alpha!r}")
            return NoLetterSpec(letter, float(self.alpha))
        if kind == "regex":
            if not self.pattern:
                raise ConfigError("regex verifier: type a pattern the response must match")
            return RegexSpec(self.pattern)
        if kind == "forbid":
            words = [w.strip() for w in (self.words or "").replace("\n", "|").split("|")]
            words = [w for w in words if w]
            if not words:
                raise ConfigError("forbidden strings: type at least one, separated by |")
            return ForbidSpec(tuple(words))
        if kind == "python-syntax":
            return PythonSyntaxSpec()
        if kind == "unit-tests":
            if not (self.tests or "").strip():
                raise ConfigError("unit tests: type Python asserts (they run after the "
                                  "response's code, in the sandbox)")
            return UnitTestsSpec(self.tests, "tests.py")
        if kind in ("head", "model"):
            path = (self.verifier_path or "").strip()
            if not path:
                raise ConfigError(f"{kind} verifier: type the verifier folder's path")
            path = os.path.expanduser(path)
            return HeadSpec(path) if kind == "head" else ModelSpec(path)
        if kind == "python function":
            fn = (self.function or "").strip()
            if ":" not in fn:
                raise ConfigError("python function verifier: give 'package.module:function' "
                                  "(fn(text, complete) -> float)")
            return FunctionSpec(fn)
        raise ConfigError(f"unknown verifier kind {kind!r}; choose one of {', '.join(VERIFIERS)}")

    def check(self) -> None:
        if not (self.prompt or "").strip():
            raise ConfigError("the prompt is empty: type what the model should answer")
        for name, lo in (("max tokens", 1), ("candidates", 1)):
            v = self.max_tokens if name == "max tokens" else self.candidates
            if v is None or int(v) != v or v < lo:
                raise ConfigError(f"{name} must be a whole number >= {lo}, got {v!r}")
        if self.temp is None or self.temp < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temp!r}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError(f"max steps must be >= 0 (0: no limit), got {self.max_steps!r}")
        if self.drift is None or not 0 < self.drift <= 1:
            raise ConfigError(f"drift must be in (0, 1], got {self.drift!r}")
        if self.top_p is None or not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p!r}")
        if self.compare and self.baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}")
        self.block_value()

    def stream_kwargs(self, sampler: str, verifier) -> dict:
        return dict(
            verifier=verifier, sampler=sampler, max_tokens=int(self.max_tokens),
            temp=float(self.temp), top_p=float(self.top_p), top_k=int(self.top_k or 0),
            seed=int(self.seed or 0), block=self.block_value(), candidates=int(self.candidates),
            max_steps=int(self.max_steps) if self.max_steps else None, drift=float(self.drift),
            system_prompt=(self.system_prompt or None))


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

    def active(self) -> int:
        with self._lock:
            return len(self._runs)


def user_message(e: BaseException) -> str:
    """What the page shows for an exception: our errors' messages; others without traceback."""
    if isinstance(e, VGBError):
        return str(e)
    log.exception("run failed")
    return f"internal error ({type(e).__name__}: {e}); the server log has the details"


class Runner:
    """Streams one run (VGB, and the baseline in compare mode) as a sequence of views."""

    def __init__(self, models: ModelCache, stream_generate: Callable,
                 update_interval_s: float = 0.1):
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
            labels = [settings.sampler]
            if settings.compare:
                labels.append(settings.baseline + " (baseline)")
            run.views = [WalkView(label=lab) for lab in labels]
            yield run.views, "loading the model…"
            model, tokenizer = self.worker.call(self.models.get, model_spec)
            samplers = [settings.sampler] + ([settings.baseline] if settings.compare else [])
            for s in samplers:
                ver = spec if s != "plain" else NoVerifierSpec()
                streams.append(self.worker.call(
                    self.stream_generate, model, tokenizer, settings.prompt,
                    **settings.stream_kwargs(s, ver)))
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
                resp = self.worker.call(next, streams[i], None)
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
                yield views, "running…" if live else "done"
        yield views, "done"
