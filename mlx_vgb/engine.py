"""Many runs, one batched forward per engine step (#14).

``Engine.run(jobs)`` runs N jobs (each a callable, e.g. ``lambda: sampler.sample(lm_i, ...)``)
that take turns on one thread at a time, in job order. A job runs until its model asks for a
forward (``MLXLanguageModel._forward``, on the trunk or on a batch of candidate rows); then the
next job runs. When every unfinished job waits on a forward, the engine serves them all: the
requests on one model become few forwards, their KV caches left-padded to a common length in a
``BatchKVCache`` (each row keeps its own positions: RoPE offsets per row, padding masked), and
every request's cache gets its own rows back. A forward's new tokens are padded on the right
to its longest request, so requests are split by length (``plan``): one-token rows apart from
a 400-token prefill, a few 2-token trunk moves with them, whichever computes fewer positions
counting ``pad_cost`` per extra forward.

Nothing in a sampler changes, so every sampler runs in the engine (VGB, the lazy walk,
ActionLevelRS, the baselines), and a job's randomness is its own run's keys: the same seed gives
the same output alone or in a batch of any size, up to float rounding between a batched and a
single-row matmul (tests/test_engine.py compares tokens on a tiny model).

``Engine.submit(job)`` is the open-ended form (the server's): the engine serves on its own
thread, and a job submitted while others run joins them at the next engine step.

``Engine.call(batch, item)`` is the generic form: the items of every job that asks the same
``batch`` callable in one engine step are served by one ``batch(items)`` call (the Dyck memo's
misses, ``mlx_vgb.bench.memo_lm``).

Each job needs its own language model object (``MLXLanguageModel`` keeps per-run caches); jobs
may share the underlying mlx-lm model. Caches that are not plain ``KVCache`` (rotating, SSM) are
served one request at a time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

T = TypeVar("T")
_local = threading.local()


def plan(shapes: Sequence[tuple[int, int]], pad_cost: int, max_rows: int) -> list[list[int]]:
    """Requests (rows, new tokens) on one model -> forwards (lists of request indices) that
    compute the fewest positions, each forward padded to its longest request and counted
    ``pad_cost`` more, at most ``max_rows`` rows each (one request alone may exceed it): the best
    split into runs of the requests sorted by length, by dynamic programming. Without the row
    cap that is the best split of all (a forward's cost is set by its longest request, so a
    shorter one never gains from a forward with a longer one it could leave for a shorter)."""
    order = sorted(range(len(shapes)), key=lambda i: (-shapes[i][1], i))
    n = len(order)
    rows = [0] * (n + 1)
    for k, i in enumerate(order):
        rows[k + 1] = rows[k] + shapes[i][0]
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for e in range(1, n + 1):
        for b in range(e - 1, -1, -1):  # forward = order[b:e], its longest is order[b]
            r = rows[e] - rows[b]
            if r > max_rows and e - b > 1:
                break
            c = best[b] + pad_cost + shapes[order[b]][1] * r
            if c < best[e]:
                best[e], cut[e] = c, b
    out, e = [], n
    while e > 0:
        out.append(sorted(order[cut[e] : e]))
        e = cut[e]
    return out[::-1]


def current() -> Engine | None:
    """The engine serving the calling job's forwards, or None outside an engine."""
    return getattr(_local, "engine", None)


@dataclass
class _Request:
    """What a waiting job asked for: a forward (``lm``, ``tokens``, ``cache``) or a ``call``
    (``batch``, ``item``)."""

    job: int  # the asking job
    weight: int  # its share of the time of the forward or call serving it (``job_seconds``)
    lm: object = None  # a forward's MLXLanguageModel
    tokens: mx.array | None = None  # a forward's new tokens (B, S)
    cache: list = field(default_factory=list)  # a forward's caches: per layer, B rows of one length
    batch: Callable | None = None  # a call's: served together with the others of ``batch``
    item: object = None
    result: object = None
    error: BaseException | None = None  # a call's batch raised: re-raised in the asking job


@dataclass
class EngineStats:
    steps: int = 0  # engine steps (rounds of batched forwards)
    forwards: int = 0  # batched forwards run
    requests: int = 0  # forward requests served
    rows: int = 0  # rows computed
    positions: int = 0  # new token positions the requests asked for
    padded: int = 0  # positions computed, right padding included
    max_rows: int = 0  # the largest batch
    shared: int = 0  # forwards that served more than one job's request
    jobs: int = 0  # jobs finished


class Handle:
    """A submitted job: ``result()`` waits for its value (or raises its error)."""

    def __init__(self, i: int):
        self.id = i
        self.value = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None):
        if not self._done.wait(timeout):
            raise TimeoutError(f"engine job {self.id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class Engine:
    """Runs jobs in turns and batches their forwards (see the module docstring).

    Two ways in: ``run(jobs)`` runs a fixed list on the calling thread and returns when all are
    done; ``submit(fn)`` adds a job to an engine that serves forever on its own thread (the
    server: requests join the batch as they arrive, at the next engine step)."""

    max_rows: int = 512  # rows per batched forward (more are split)
    # what one more forward costs, in computed positions: it reads every weight once more.
    # Measured here on Qwen2.5-Coder-0.5B float32 (2 cores, cache of 300): 1 x 1 token 0.4-0.8 s,
    # 24 x 8 tokens 2.9 s, i.e. ~11 ms a position and ~0.7 s (~64 positions) per forward.
    pad_cost: int = 64
    stats: EngineStats = field(default_factory=EngineStats)

    def __post_init__(self):
        # one lock; the scheduler waits on ``_cv``, each job on its own condition (``_wake``):
        # a hand-off wakes one thread, not every parked job (with 108 jobs, notify_all on one
        # condition held the GIL for over a third of a Dyck benchmark's time)
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._wake: dict[int, threading.Condition] = {}
        self._turn: int | None = None  # job allowed to run; None: the engine
        self._pending: dict[int, _Request] = {}
        self._incoming: list[int] = []  # submitted, not yet given a turn
        self._handles: dict[int, Handle] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._seconds: dict[int, float] = {}  # each job's own time (see job_seconds)
        self._turn_t0 = 0.0

    # -- the jobs' side ----------------------------------------------------------------------
    def forward(self, lm, tokens: mx.array, cache: list) -> tuple:
        """Called by a job's model: wait for the engine to serve this forward."""
        # MLX streams are per thread: what crosses to the engine's thread must be evaluated
        mx.eval(tokens, *_arrays(cache))
        b, s = tokens.shape
        return self._wait(_Request(_local.job, b * s, lm=lm, tokens=tokens, cache=cache))

    def call(self, batch: Callable[[list], list], item, weight: int = 1):
        """Called by a job: ``batch(items)[i]`` once every job waits, ``batch`` called once per
        engine step on the items of every job that asked it (requests with equal ``batch``
        callables are served together, in job order). The generic form of ``forward``, for a
        model that batches its own work (``MemoTreeLM``: the memo misses of many runs computed
        together). ``weight``: this request's share of the call's time (``job_seconds``)."""
        return self._wait(_Request(_local.job, max(int(weight), 1), batch=batch, item=item))

    def _wait(self, req: _Request):
        """Hand the turn back to the scheduler until ``req`` is served; its result."""
        with self._cv:
            self._pending[req.job] = req
            self._turn = None
            self._cv.notify_all()
            self._wake[req.job].wait_for(lambda: self._turn == req.job)
        if req.error is not None:
            raise req.error
        return req.result

    def job_seconds(self) -> float:
        """The calling job's own time so far: its turns on the host plus its share (by rows x
        new tokens) of every batched forward that served it. Jobs batched together are timed
        apart this way (the app's compare mode)."""
        me = getattr(_local, "job", -1)
        now = time.perf_counter() - self._turn_t0 if self._turn == me else 0.0  # this turn
        return self._seconds.get(me, 0.0) + now

    def _charge(self, reqs: list[_Request], seconds: float) -> None:
        total = sum(r.weight for r in reqs) or 1
        for r in reqs:
            self._seconds[r.job] = self._seconds.get(r.job, 0.0) + seconds * r.weight / total

    def _worker(self, i: int, fn: Callable, h: Handle) -> None:
        _local.engine, _local.job = self, i
        with self._cv:
            self._wake[i].wait_for(lambda: self._turn == i)
        try:
            h.value = fn()
        except BaseException as e:  # re-raised by result() / run() in the caller's thread
            h.error = e
        finally:
            with self._cv:
                self._handles.pop(i, None)
                self._wake.pop(i, None)
                self.stats.jobs += 1
                self._turn = None
                self._cv.notify_all()
            h._done.set()

    def _add(self, fn: Callable) -> Handle:
        """A new job, parked until the scheduler gives it a turn (call under ``_cv``)."""
        i = self._next
        self._next += 1
        h = self._handles[i] = Handle(i)
        self._wake[i] = threading.Condition(self._lock)
        self._incoming.append(i)
        threading.Thread(target=self._worker, args=(i, fn, h), daemon=True).start()
        return h

    # -- the engine's side -------------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> Handle:
        """Add a job; the engine starts serving on its own thread at the first submit and
        batches this job's forwards with those of every job running then."""
        with self._cv:
            if self._closed:
                raise RuntimeError("this engine is closed")
            h = self._add(fn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._schedule, args=(True,), name="mlx-vgb-engine", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()
        return h

    def close(self) -> None:
        """Stop serving once the jobs submitted so far are done."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def run(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``jobs`` to completion; their results in order (the first error is raised)."""
        if self._thread is not None:  # already serving: join the running batch
            handles = [self.submit(f) for f in jobs]
            return [h.result() for h in handles]
        with self._cv:
            handles = [self._add(f) for f in jobs]
        self._schedule(False, abort=handles)
        for h in handles:
            if h.error is not None:
                raise h.error
        return [h.value for h in handles]

    def _schedule(self, forever: bool, abort: Sequence[Handle] = ()) -> None:
        """The scheduler: give every runnable job a turn (each runs until it waits on a forward
        or ends), serve the forwards they wait on, repeat. New jobs join at the next round."""
        runnable: list[int] = []
        while True:
            with self._cv:
                if forever and not runnable:
                    self._cv.wait_for(lambda: self._incoming or self._closed)
                    if not self._incoming and not self._handles:
                        return  # closed and idle
                runnable += self._incoming
                self._incoming.clear()
            for i in runnable:
                t0 = self._turn_t0 = time.perf_counter()
                with self._cv:
                    self._turn = i
                    self._wake[i].notify()
                    self._cv.wait_for(lambda: self._turn is None)
                    if i in self._handles:  # a finished job's time is no longer asked for
                        self._seconds[i] = self._seconds.get(i, 0.0) + time.perf_counter() - t0
                    else:
                        self._seconds.pop(i, None)
            if any(h.error is not None for h in abort):
                # the other jobs stay parked (daemon threads); run() reports the error
                with self._cv:
                    for i in self._pending:
                        self._handles.pop(i, None)
                    self._pending.clear()
                return
            if not self._pending:
                runnable = []
                with self._cv:
                    if not forever and not self._incoming:
                        return  # every job is done
                continue
            served = sorted(self._pending)
            self._serve([self._pending[i] for i in served])
            self._pending.clear()
            runnable = served

    def _serve(self, reqs: list[_Request]) -> None:
        self.stats.steps += 1
        calls: dict[Callable, list[_Request]] = {}
        for r in reqs:
            if r.batch is not None:
                calls.setdefault(r.batch, []).append(r)
        for batch, group in calls.items():
            t0 = time.perf_counter()
            try:
                out = batch([r.item for r in group])
                if len(out) != len(group):
                    raise RuntimeError(
                        f"{batch!r} returned {len(out)} results for {len(group)} items"
                    )
                for r, x in zip(group, out):
                    r.result = x
            except Exception as e:  # each asking job raises it in its own thread
                for r in group:
                    r.error = e
            finally:
                self._charge(group, time.perf_counter() - t0)
            self.stats.requests += len(group)
            self.stats.shared += len(group) > 1
        reqs = [r for r in reqs if r.batch is None]
        groups: dict[tuple, list[_Request]] = {}
        for r in reqs:
            plain = all(type(c) is KVCache for c in r.cache)
            key = (id(r.lm.model),) if plain else ("alone", id(r))
            groups.setdefault(key, []).append(r)
        for key, group in groups.items():
            if key[0] == "alone":
                for r in group:
                    t0 = time.perf_counter()
                    r.result = r.lm._forward_local(r.tokens, r.cache)
                    mx.eval(*_arrays(r.cache))
                    self._charge([r], time.perf_counter() - t0)
                    self._tally([r])
                    self._count(1, r.tokens.shape[0])
                continue
            shapes = [(r.tokens.shape[0], r.tokens.shape[1]) for r in group]
            for chunk in plan(shapes, self.pad_cost, self.max_rows):
                self._batched([group[i] for i in chunk])

    def _tally(self, reqs: list[_Request]) -> None:
        """Count requests served together in one forward: the positions they asked for and the
        positions computed (each row padded on the right to the longest)."""
        self.stats.requests += len(reqs)
        s = max(r.tokens.shape[1] for r in reqs)
        self.stats.positions += sum(r.tokens.shape[0] * r.tokens.shape[1] for r in reqs)
        self.stats.padded += s * sum(r.tokens.shape[0] for r in reqs)

    def _count(self, forwards: int, rows: int) -> None:
        self.stats.forwards += forwards
        self.stats.rows += rows
        self.stats.max_rows = max(self.stats.max_rows, rows)

    def _batched(self, reqs: list[_Request]) -> None:
        """One forward for requests on one model. Rows of S_i < S new tokens are padded on the
        right (causal attention: the padding never reaches the first S_i positions; its keys
        are dropped and the state read at position S_i - 1)."""
        t0 = time.perf_counter()
        try:
            self._batched_forward(reqs)
        finally:
            self._charge(reqs, time.perf_counter() - t0)

    def _batched_forward(self, reqs: list[_Request]) -> None:
        self._tally(reqs)
        if len(reqs) == 1:
            r = reqs[0]
            r.result = r.lm._forward_local(r.tokens, r.cache)
            mx.eval(*_arrays(r.cache))
            self._count(1, r.tokens.shape[0])
            return
        news = [r.tokens.shape[1] for r in reqs]
        s = max(news)
        lens = [r.cache[0].offset for r in reqs]
        sizes = [r.tokens.shape[0] for r in reqs]
        lmax = max(lens)
        pads = [lmax - n for n, b in zip(lens, sizes) for _ in range(b)]
        merged = []
        rows = sum(sizes)
        for layer in range(len(reqs[0].cache)):
            like = next((r.cache[layer] for r in reqs if r.cache[layer].keys is not None), None)
            bc = BatchKVCache(pads)
            if like is not None:
                # one copy of each request's entries into the zeroed batch (left padding, then
                # the entries, then room for the s new positions)
                for name in ("keys", "values"):
                    x = getattr(like, name)
                    batch = mx.zeros((rows, x.shape[1], lmax + s, x.shape[3]), dtype=x.dtype)
                    start = 0
                    for r, n, b in zip(reqs, lens, sizes):
                        if n:
                            batch[start : start + b, :, lmax - n : lmax, :] = getattr(
                                r.cache[layer], name
                            )[..., :n, :]
                        start += b
                    setattr(bc, name, batch)
                bc._idx = lmax
                bc.offset = mx.array([n for n, b in zip(lens, sizes) for _ in range(b)])
            merged.append(bc)
        tokens = mx.concatenate(
            [
                mx.pad(r.tokens, [(0, 0), (0, s - k)]) if k < s else r.tokens
                for r, k in zip(reqs, news)
            ],
            axis=0,
        )
        h = reqs[0].lm._backbone(tokens, merged)
        self._heads(reqs, h, sizes, news)
        start = 0
        for r, n, b, k in zip(reqs, lens, sizes, news):
            for layer, c in enumerate(r.cache):  # this request's new entries, back in place
                bc = merged[layer]
                c.keys = _extended(c, c.keys, n, bc.keys[start : start + b, :, lmax : lmax + k, :])
                c.values = _extended(
                    c, c.values, n, bc.values[start : start + b, :, lmax : lmax + k, :]
                )
                c.offset = n + k
            r.lm.forward_calls += 1
            start += b
        mx.eval(*[a for r in reqs for a in _arrays(r.cache)])
        self._count(1, start)
        self.stats.shared += 1

    @staticmethod
    def _heads(reqs: list[_Request], h: mx.array, sizes: list[int], news: list[int]) -> None:
        """Every request's log-probs (and values) from the batch's hidden states, in one matmul
        per value head: the output layer (V x D, 0.5 GB at V = 151,936, D = 896 in float32) is
        read once per step, not once per request. Each request gets its own copy of its rows
        (a gather): a view would keep the whole batch's (N, V) log-probs alive in its caches."""
        last, start = [], 0
        for b, k in zip(sizes, news):
            last.append(h[start : start + b, k - 1 : k, :])
            start += b
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(id(r.lm.value_head), []).append(i)
        for g in groups.values():
            hh = mx.concatenate([last[i] for i in g], axis=0) if len(g) > 1 else last[g[0]]
            logp, val = reqs[g[0]].lm._heads(hh)
            off = 0
            for i in g:
                b = sizes[i]
                rows = logp if len(g) == 1 else mx.take(logp, mx.arange(off, off + b), axis=0)
                reqs[i].result = (rows, None if val is None else val[off : off + b])
                off += b
            mx.eval(*[reqs[i].result[0] for i in g])


def _arrays(cache: list) -> list:
    """Every array of a list of layer caches (KV or other)."""
    out = []
    for c in cache:
        st = c.state
        for x in st if isinstance(st, (list, tuple)) else (st,):
            if isinstance(x, mx.array):
                out.append(x)
    return out


def _extended(c, x, n: int, new: mx.array) -> mx.array:
    """A request's layer array ``x`` (its first ``n`` positions valid, or None) followed by the
    ``k`` positions of ``new`` (a slice of the batch): written in place when ``x`` has room for
    them, as mlx-lm's ``KVCache.update_and_fetch`` does (only the new positions are copied), else
    a copy grown to the next multiple of the cache's step (a view of the batch would keep the
    whole batch alive)."""
    k = new.shape[2]
    if x is not None and x.shape[2] >= n + k:
        x[..., n : n + k, :] = new
        return x
    step = getattr(c, "step", 256)
    room = -(-(n + k) // step) * step - (n + k)
    parts = [x[..., :n, :]] if x is not None and n else []
    parts.append(new)
    if room:
        parts.append(mx.zeros((*new.shape[:2], room, new.shape[3]), dtype=new.dtype))
    return mx.concatenate(parts, axis=2)


def run_many(jobs: Sequence[Callable[[], T]], engine: Engine | None = None) -> list[T]:
    """``jobs`` through one engine (a new one unless given)."""
    return (engine or Engine()).run(jobs)


__all__ = ["Engine", "EngineStats", "Handle", "current", "run_many"]
