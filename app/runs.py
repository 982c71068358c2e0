"""Runs behind the web page: settings from the form, loaded models, one run per session, cancel.

Only the public API is used (``mlx_vgb.generate.load`` / ``stream_generate``). Model work of all
sessions runs on one ``ModelWorker`` thread a walk event at a time, so concurrent runs interleave
(first come, first served) instead of calling MLX from several threads at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import importlib
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, VGBError
from ..registry import (
    SAMPLERS,
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
GENERATOR_PICK = "picked"  # the model picker's value: default, a registry name, folder or hub id
GENERATORS = (GENERATOR_DEFAULT, GENERATOR_PICK, GENERATOR_FOLDER, GENERATOR_HUB)
DEFAULT_MODEL_CHOICE = "default"
CHOICES = ("default", "rejection", "self-normalized", "enumerate")

VERIFIERS = (
    "none",
    "no-letter",
    "regex",
    "forbid",
    "python-syntax",
    "unit-tests",
    "head",
    "model",
    "python function",
)
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
    choice: str = "default"  # child-choice rule of the walks (mlx_vgb.children.CHOICES)
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
        path = (self.model_path or "").strip()
        if self.generator == GENERATOR_DEFAULT or (
            self.generator == GENERATOR_PICK and path in ("", DEFAULT_MODEL_CHOICE)
        ):
            return default
        if self.generator == GENERATOR_PICK:
            return resolve_model(path)
        if not path:
            raise ConfigError(
                f"generator '{self.generator}': type the folder path or hub id in the model box"
            )
        if self.generator == GENERATOR_FOLDER and not os.path.isdir(os.path.expanduser(path)):
            raise ConfigError(
                f"no folder at {path!r}: give an MLX model folder (convert other "
                "formats with `mlx-vgb convert`)"
            )
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
            # spaces count ("a " bans "a " only); empty entries are dropped
            words = [w for w in (self.words or "").replace("\n", "|").split("|") if w.strip()]
            if not words:
                raise ConfigError("forbidden strings: type at least one, separated by |")
            return ForbidSpec(tuple(words))
        if kind == "python-syntax":
            return PythonSyntaxSpec()
        if kind == "unit-tests":
            if not (self.tests or "").strip():
                raise ConfigError(
                    "unit tests: type Python asserts (they run after the "
                    "response's code, in the sandbox)"
                )
            return UnitTestsSpec(self.tests, str(saved_file(self.tests, "tests", ".py")))
        if kind in ("head", "model"):
            path = (self.verifier_path or "").strip()
            if not path:
                raise ConfigError(f"{kind} verifier: type the verifier folder's path")
            path = os.path.expanduser(path)
            return HeadSpec(path) if kind == "head" else ModelSpec(path)
        if kind == "python function":
            fn = (self.function or "").strip()
            if ":" not in fn:
                raise ConfigError(
                    "python function verifier: give 'package.module:function' "
                    "(fn(text, complete) -> float)"
                )
            return FunctionSpec(fn)
        raise ConfigError(f"unknown verifier kind {kind!r}; choose one of {', '.join(VERIFIERS)}")

    def check(self) -> None:
        """Every field in range, else a ``FieldError`` naming the field as the form labels it."""
        if not (self.prompt or "").strip():
            raise FieldError("Prompt", "the prompt is empty: type what the model should answer")
        for name, label, lo in (
            ("max_tokens", "Max tokens (H)", 1),
            ("candidates", "Candidates K", 1),
            ("max_steps", "Max steps", 0),
            ("top_k", "top-k", 0),
            ("seed", "Seed", 0),
        ):
            v = getattr(self, name)
            if v is None or not isinstance(v, (int, float)) or int(v) != v or v < lo:
                raise FieldError(
                    label,
                    f"must be a whole number >= {lo}, got {v!r}"
                    + (" (0: no limit)" if name == "max_steps" else ""),
                )
        for name, label, lo, hi, lo_open in (
            ("temp", "Temperature", 0, None, False),
            ("drift", "Drift lambda", 0, 1, True),
            ("top_p", "top-p", 0, 1, True),
            ("alpha", "alpha", 0, 1, True),
        ):
            v = getattr(self, name)
            if name == "alpha" and self.verifier != "no-letter":
                continue
            bad = (
                v is None
                or not isinstance(v, (int, float))
                or v < lo
                or (lo_open and v == lo)
                or (hi is not None and v > hi)
            )
            if bad:
                rng = f"in ({lo}, {hi}]" if hi is not None else f">= {lo}"
                raise FieldError(label, f"must be {rng}, got {v!r}")
        if self.sampler not in SAMPLERS:
            raise FieldError("Sampler", f"choose one of {', '.join(SAMPLERS)}")
        if self.choice not in CHOICES:
            raise FieldError("Choice rule", f"choose one of {', '.join(CHOICES)}")
        if self.compare and self.baseline not in BASELINES:
            raise FieldError("Baseline", f"choose one of {', '.join(BASELINES)}")
        try:
            self.block_value()
        except ConfigError as e:
            raise FieldError("Block (action)", str(e)) from None

    def stream_kwargs(self, sampler: str, verifier) -> dict:
        return dict(
            verifier=verifier,
            sampler=sampler,
            max_tokens=int(self.max_tokens),
            temp=float(self.temp),
            top_p=float(self.top_p),
            top_k=int(self.top_k or 0),
            seed=int(self.seed or 0),
            block=self.block_value(),
            candidates=int(self.candidates),
            max_steps=int(self.max_steps) if self.max_steps else None,
            drift=float(self.drift),
            choice=None if self.choice in ("", "default") else self.choice,
            system_prompt=(self.system_prompt or None),
        )


class FieldError(ConfigError):
    """A form field is out of range; the message starts with the field's label."""

    def __init__(self, field_label: str, message: str):
        self.field = field_label
        super().__init__(f"{field_label}: {message}")


def app_home() -> Path:
    """Where the app keeps files it writes (the tests box, uploaded verifier modules)."""
    base = os.environ.get("MLX_VGB_HOME") or os.path.expanduser("~/.cache/mlx-vgb")
    d = Path(base) / "app"
    d.mkdir(parents=True, exist_ok=True)
    return d


def saved_file(text: str, stem: str, suffix: str) -> Path:
    """``text`` saved under ``app_home()`` by content hash (the command line names this file)."""
    h = hashlib.sha256(text.encode()).hexdigest()[:10]
    path = app_home() / f"{stem}-{h}{suffix}"
    if not path.exists():
        path.write_text(text)
    return path


def save_verifier_module(source: str, filename: str = "verifier.py") -> str:
    """An uploaded verifier module, saved under ``app_home()/modules`` (put on ``sys.path``);
    returns the ``module:function`` spec of its first ``fn(text, complete)`` function."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise FieldError("Verifier module", f"{filename} does not parse: {e}") from None
    fns = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and len(n.args.args) >= 2]
    if not fns:
        raise FieldError("Verifier module", f"{filename} defines no function fn(text, complete)")
    name = next((f for f in fns if f in ("verify", "verifier", "value")), fns[0])
    mods = app_home() / "modules"
    mods.mkdir(exist_ok=True)
    stem = "".join(ch if ch.isalnum() else "_" for ch in Path(filename).stem) or "verifier"
    (mods / f"{stem}.py").write_text(source)
    if str(mods) not in sys.path:
        sys.path.insert(0, str(mods))
    return f"{stem}:{name}"


def _installed_dirs() -> tuple[str, ...]:
    """Where the package's and the environment's code lives (not the user's own)."""
    import mlx_vgb

    return (
        str(Path(mlx_vgb.__file__).resolve().parent),
        str(Path(__file__).resolve().parent),
        sys.prefix,
        sys.base_prefix,
    )


def reload_if_changed(target: str) -> None:
    """A user's verifier module edited since it was imported is imported again (no restart)."""
    mod = sys.modules.get(target.partition(":")[0])
    path = getattr(mod, "__file__", None)
    if not path or not os.path.exists(path):
        return
    if path.startswith(_installed_dirs()):
        return  # installed code does not change under a running app
    mtime = os.path.getmtime(path)
    if getattr(mod, "_mlx_vgb_mtime", None) != mtime:  # first seen here, or edited since
        mod = importlib.reload(mod)
    mod._mlx_vgb_mtime = mtime


def model_choices(default_label: str) -> list[tuple[str, str]]:
    """The model picker: the default, the registry's models (``mlx_vgb.models``, marked when on
    disk) and other converted folders; empty extras where the registry is not there."""
    out = [(f"default ({default_label})", DEFAULT_MODEL_CHOICE)]
    try:
        from .. import models as reg

        rows, others = reg.status()
        for r in rows:
            where = "on disk" if r.folders else "downloads on first use"
            out.append((f"{r.name}: {r.description} [{where}]", r.name))
        out += [(f"local: {p}", str(p)) for p in others]
    except Exception:  # noqa: BLE001 - no registry (or no cache): the default and typed paths
        log.debug("model registry unavailable", exc_info=True)
    return out


def resolve_model(name: str) -> str:
    """A picked model -> what ``load`` takes: a registry name is pulled (``mlx_vgb.models``)."""
    try:
        from .. import models as reg
    except Exception:  # noqa: BLE001
        reg = None
    if reg is not None and name in getattr(reg, "REGISTRY", {}):
        return reg.resolve(name)
    p = os.path.expanduser(name)
    if name.startswith((".", "/", "~")) and not os.path.isdir(p):
        raise FieldError(
            "Model",
            f"no folder at {name!r}: give an MLX model folder (convert "
            "other formats with `mlx-vgb convert`)",
        )
    return p if os.path.isdir(p) else name


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
