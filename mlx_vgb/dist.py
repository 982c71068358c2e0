"""pi_ref(. | node) after temperature / top-k / top-p, on the device, for a batch of rows.

``process_batch`` turns a (B, V) array of log-probs (one row per prefix, as one batched forward
returns them) into a ``DistBatch`` with MLX ops; ``draw`` samples tokens from any rows of any
batches by inverse CDF with uniforms from the run's ``KeyedRNG`` (same seed, same output), and
only the chosen token ids and their log-probs cross to the host. ``support`` gives a row's whole
truncated distribution on the host (for ``Enumerate``: small vocabularies or top-k).

Rows of at most ``HOST_DRAW_MAX`` entries (small vocabularies: the Dyck LM's 7 tokens) are
processed on the host in float32 numpy instead (``_process_host``: the same steps): for them a
device round trip costs more than the work, and their draws and supports then need no sync.

Truncation without a full sort: top-k takes ``argpartition`` then sorts k entries; top-p alone
takes the ``nucleus_candidates`` largest entries, sorts them, and checks on the device that they
hold at least top_p of the mass (rows normalized); the rows whose nucleus is larger are redone
with 8x the candidates, up to the whole vocabulary (a full sort). The result is the
smallest prefix of the sorted distribution holding top_p of its mass, as in
``reference_process`` (float64 numpy, the former host path: the tests' reference and the
"before" of ``bench perf``).

Rows wider than ``HOST_DRAW_MAX`` are the memory of a walk: 151,936 float32 entries (~0.6 MB)
per tree node at Qwen's vocabulary. ``set_row_memory(limit)`` (or ``$MLX_VGB_ROW_MEMORY``, GiB)
bounds what they hold in memory: past the limit the least recently drawn batches are written to
an unlinked temporary file (``RowSpill``) and read back row by row when drawn from -- the same
float32 bits, so the same tokens, log-probs and forward-token counts as without a limit.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Sequence

import mlx.core as mx
import numpy as np

from .errors import ConfigError, VGBError

DEFAULT_NUCLEUS_CANDIDATES = 1024
_GROWTH = 8
# rows of at most this many entries (small vocabularies, small top-k) are drawn on the host
# from the device-computed CDF, copied once per batch: a device sync per draw costs more than
# the copy. The arithmetic is the device's (float32), so both paths give the same tokens.
HOST_DRAW_MAX = 256
# what a row batch holds, by name, as it is kept in memory and in the spill file
_DTYPES = {"logp": np.float32, "ids": np.int32}


@dataclass
class DistBatch:
    """B truncated next-token distributions. Row b's support is ``ids[b, :last[b] + 1]`` (token
    ids; the positions 0..V-1 themselves when ``ids`` is None) with normalized log-probs
    ``logp[b, :last[b] + 1]`` (-inf marks a zero-probability entry)."""

    logp: mx.array  # (B, M) float32
    last: mx.array  # (B,) int32: index of the last support entry
    ids: mx.array | None = None  # (B, M) int32, or None: all V tokens in their natural order
    _cdf: mx.array | None = field(default=None, repr=False)
    _host: tuple | None = field(default=None, repr=False)
    # set by ``RowSpill``: where the rows went once ``logp`` / ``ids`` left memory
    _spill: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        self.n_rows, self.width = self.logp.shape
        self.has_ids = self.ids is not None

    def take_logp(self, rows: np.ndarray) -> mx.array:
        """(len(rows), M) log-prob rows, from memory or from the spill file (the same bits)."""
        return self._take("logp", rows)

    def take_ids(self, rows: np.ndarray) -> mx.array | None:
        """(len(rows), M) token ids of the rows' entries, or None (natural order)."""
        return self._take("ids", rows) if self.has_ids else None

    def _take(self, name: str, rows) -> mx.array:
        rows = np.asarray(rows, dtype=np.int64)
        sp = self._spill
        if sp is None or not sp["spilled"]:
            arr = getattr(self, name)  # one read: a spill in another thread may clear it
            if arr is not None:
                if sp is not None:
                    sp["store"].touch(sp)
                return arr[mx.array(rows.astype(np.int32))]
        # spilled: read each distinct row once (a walk draws k uniforms from one row)
        uniq, inverse = np.unique(rows, return_inverse=True)
        return mx.array(sp["store"].read(sp, name, uniq)[inverse.reshape(-1)])

    @property
    def cdf(self) -> mx.array:
        """(B, M) cumulative probabilities (lazy; kept only for small rows: at M = 151,936 a
        kept CDF would double the memory of every tree node -- ``draw`` recomputes the rows it
        draws from instead)."""
        if self._cdf is not None:
            return self._cdf
        cdf = cumulative(self._all("logp"))
        if self.width <= HOST_DRAW_MAX:
            self._cdf = cdf
        return cdf

    def _all(self, name: str) -> mx.array | None:
        """Every row's ``logp`` / ``ids`` (None: no ids), wherever they live."""
        arr = getattr(self, name)
        if arr is not None or (name == "ids" and not self.has_ids):
            return arr
        return self._take(name, np.arange(self.n_rows))

    def host(self) -> tuple:
        """(cdf, last, ids or None, logp) as numpy (one copy, kept)."""
        if self._host is None:
            logp, ids = self._all("logp"), self._all("ids")
            arrs = (self.cdf, self.last, logp) + (() if ids is None else (ids,))
            mx.eval(*arrs)
            ids = None if ids is None else np.array(ids)
            self._host = (np.array(self.cdf), np.array(self.last), ids, np.array(logp))
        return self._host

    def rows(self) -> list[NextTokenDist]:
        return [NextTokenDist(self, b) for b in range(self.n_rows)]


@dataclass(eq=False)
class NextTokenDist:
    """One row of a ``DistBatch``: pi_ref(. | node) after temperature / top-k / top-p."""

    batch: DistBatch
    row: int

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Inverse-CDF draws for uniforms ``u`` -> token ids."""
        return draw([(self, np.asarray(u))])[0][0]

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, float64 log-probs) of the tokens with positive probability."""
        b = self.batch
        if b._host is not None:  # already on the host: no device sync
            _, last, hid, hlogp = b._host
            n = int(last[self.row]) + 1
            logp = hlogp[self.row, :n].astype(np.float64)
            ids = np.arange(n) if hid is None else hid[self.row, :n].astype(np.int64)
        else:
            n = int(b.last[self.row].item()) + 1
            r = np.array([self.row])
            logp = np.array(b.take_logp(r)[0, :n]).astype(np.float64)
            ids = np.arange(n) if not b.has_ids else np.array(b.take_ids(r)[0, :n]).astype(np.int64)
        keep = np.isfinite(logp)
        return ids[keep], logp[keep]


class RowSpill:
    """Keeps the large rows' memory (the batches wider than ``HOST_DRAW_MAX``) under ``limit``
    bytes: a new batch past the limit sends the least recently drawn batches to an unlinked
    temporary file in ``directory`` (one slot per row, slots reused once their batch is freed),
    and their draws read the rows back (``os.pread``: the page cache keeps the hot ones). The
    bits are the same, so are the tokens; only where the rows live changes. Thread-safe (the
    engine's jobs draw from their own threads). A freed batch's finalizer only queues its
    record (it may run inside a locked section, from the garbage collector); the queue is
    drained under the lock by the next ``add`` or ``read``. Slots are kept per row size (rows
    of one width share them: a full vocabulary, or each nucleus width under top-p)."""

    def __init__(self, limit: int, directory: str | None = None):
        if limit < 0:
            raise ValueError(f"row memory limit must be >= 0 bytes, got {limit}")
        self.limit = int(limit)
        self.directory = directory
        self.lock = threading.Lock()
        self.live: OrderedDict[int, tuple] = OrderedDict()  # in memory, least recent first
        self.held = 0  # bytes of the rows in memory
        self.end = 0  # file size
        self.free: dict[int, list[int]] = {}  # slot size -> free offsets
        self.freed: deque = deque()  # records of freed batches, not yet drained
        self.spilled_batches = 0
        self.read_rows = 0
        try:  # opened now: a bad directory fails before any model loads
            self.file = tempfile.TemporaryFile(prefix="mlx-vgb-rows-", dir=directory)
        except OSError as e:
            raise _spill_error(directory, e) from None

    def add(self, batch: DistBatch) -> None:
        nbytes = batch.logp.nbytes + (batch.ids.nbytes if batch.has_ids else 0)
        sp = {"store": self, "spilled": False, "bytes": nbytes, "key": id(batch)}
        batch._spill = sp
        fin = weakref.finalize(batch, self.freed.append, sp)  # deque.append: thread-safe
        fin.atexit = False
        with self.lock:
            self._drain()
            self.live[sp["key"]] = (weakref.ref(batch), sp)
            self.held += nbytes
            while self.held > self.limit and self.live:
                key, (ref, victim) = next(iter(self.live.items()))
                b = ref()
                if b is not None:
                    self._write(b, victim)  # may raise: the victim then stays counted
                    del b
                del self.live[key]
                self.held -= victim["bytes"]

    def touch(self, sp: dict) -> None:
        with self.lock:
            if sp["key"] in self.live and not sp["spilled"]:
                self.live.move_to_end(sp["key"])

    def _drain(self) -> None:
        while self.freed:
            sp = self.freed.popleft()
            if sp["key"] in self.live and self.live[sp["key"]][1] is sp:
                del self.live[sp["key"]]
                self.held -= sp["bytes"]
            for name in ("logp", "ids"):
                if name in sp:
                    offs, size = sp.pop(name)
                    self.free.setdefault(size, []).extend(offs)

    def _slot(self, size: int) -> int:
        free = self.free.get(size)
        if free:
            return free.pop()
        off = self.end
        self.end += size
        return off

    def _write(self, batch: DistBatch, sp: dict) -> None:
        fd = self.file.fileno()
        names = ("logp", "ids") if batch.has_ids else ("logp",)
        done = {}
        try:
            for name in names:
                arr = np.ascontiguousarray(np.array(getattr(batch, name)), dtype=_DTYPES[name])
                size = arr.shape[1] * arr.itemsize
                offs = []
                done[name] = (offs, size)
                for row in arr:
                    off = self._slot(size)
                    offs.append(off)
                    view = memoryview(row.tobytes())
                    while view:  # pwrite may write less than asked
                        n = os.pwrite(fd, view, off)
                        view, off = view[n:], off + n
        except OSError as e:
            for offs, size in done.values():  # give the slots back; the rows stay in memory
                self.free.setdefault(size, []).extend(offs)
            raise _spill_error(self.directory, e) from None
        sp.update(done)
        sp["spilled"] = True
        batch.logp = None
        batch.ids = None
        self.spilled_batches += 1

    def read(self, sp: dict, name: str, rows: np.ndarray) -> np.ndarray:
        dtype = _DTYPES[name]
        with self.lock:
            self._drain()
            offs, size = sp[name]
            fd = self.file.fileno()
            out = np.empty((len(rows), size // np.dtype(dtype).itemsize), dtype=dtype)
            for i, r in enumerate(np.asarray(rows, dtype=np.int64)):
                buf = os.pread(fd, size, offs[int(r)])
                if len(buf) != size:
                    raise VGBError(
                        f"short read from the row spill file ({len(buf)} of {size} bytes): "
                        "was the temporary directory cleaned while it ran?"
                    )
                out[i] = np.frombuffer(buf, dtype=dtype)
            self.read_rows += len(rows)
        return out


def _spill_error(directory: str | None, e: OSError) -> VGBError:
    where = directory or tempfile.gettempdir()
    return VGBError(
        f"the row spill file in {where} failed ({e.strerror or e}): free disk space there, "
        "point $TMPDIR at a disk with room, or raise --row-memory"
    )


_ROW_SPILL: RowSpill | None = None
_ENV_READ = False


def set_row_memory(limit_bytes: int | None, directory: str | None = None) -> None:
    """Bound the memory of large next-token rows to ``limit_bytes`` from now on (None: no
    bound, the default). Past it, the least recently drawn rows go to a temporary file in
    ``directory`` ($TMPDIR by default) and are read back, bit for bit, when drawn from. Rows
    made before the call are not counted."""
    global _ROW_SPILL, _ENV_READ
    _ROW_SPILL = None if limit_bytes is None else RowSpill(limit_bytes, directory)
    _ENV_READ = True  # an explicit setting wins over $MLX_VGB_ROW_MEMORY


def row_spill() -> RowSpill | None:
    """The active ``RowSpill`` (None without a bound); the first call reads
    ``$MLX_VGB_ROW_MEMORY`` (GiB) unless ``set_row_memory`` came first."""
    if not _ENV_READ:
        text = os.environ.get("MLX_VGB_ROW_MEMORY", "")
        if text:
            try:
                limit = parse_row_memory(text)
            except ValueError as e:  # raised again at every call until the variable is fixed
                raise ConfigError(f"$MLX_VGB_ROW_MEMORY: {e}; unset it or set a number") from None
            set_row_memory(limit)
        else:
            set_row_memory(None)
    return _ROW_SPILL


def parse_row_memory(text: str) -> int:
    """'6' or '6.5' (GiB) -> bytes; a clear error otherwise."""
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if not gib >= 0 or math.isinf(gib):
        raise ValueError(f"row memory must be a number of GiB >= 0 (e.g. 6), got {text!r}")
    return int(gib * 2**30)


ROW_MEMORY_HELP = (
    "keep at most this many GiB of next-token rows (~0.6 MB per tree node at a 152k "
    "vocabulary) in memory; older rows go to a temporary file and are read back bit for bit "
    "(the same samples and costs). Default: $MLX_VGB_ROW_MEMORY, else no bound"
)


def add_row_memory_arg(p) -> None:
    """``--row-memory GIB`` on an argparse parser (``apply_row_memory`` reads it)."""
    p.add_argument("--row-memory", default=None, metavar="GIB", help=ROW_MEMORY_HELP)


def apply_row_memory(args) -> None:
    """Set the bound from ``args.row_memory`` (a ``ConfigError`` naming the flag if bad)."""
    text = getattr(args, "row_memory", None)
    if text is None:
        row_spill()  # $MLX_VGB_ROW_MEMORY, checked now rather than at the first walk
        return
    try:
        limit = parse_row_memory(text)
    except ValueError as e:
        raise ConfigError(f"--row-memory: {e}") from None
    set_row_memory(limit)


def _kept(batch: DistBatch, host_max: int) -> DistBatch:
    spill = row_spill()
    if spill is not None and batch.width > max(host_max, HOST_DRAW_MAX):
        spill.add(batch)
    return batch


def cumulative(logp: mx.array) -> mx.array:
    """Cumulative probabilities of log-prob rows (row by row: a row's CDF does not depend on
    the rows computed with it)."""
    return mx.cumsum(mx.exp(logp), axis=-1)


def _last_finite(x: mx.array) -> mx.array:
    """(B,) index of the last finite entry of each row (0 when none is)."""
    v = x.shape[-1]
    return (v - 1 - mx.argmax(mx.isfinite(x[:, ::-1]), axis=-1)).astype(mx.int32)


def _sorted_top(x: mx.array, m: int) -> tuple[mx.array, mx.array]:
    """The m largest entries of each row, in decreasing order: (ids, values)."""
    if m < x.shape[-1]:
        part = mx.argpartition(-x, m - 1, axis=-1)[:, :m]
        vals = mx.take_along_axis(x, part, axis=-1)
    else:
        part = mx.broadcast_to(mx.arange(x.shape[-1], dtype=mx.uint32), x.shape)
        vals = x
    order = mx.argsort(-vals, axis=-1)
    return mx.take_along_axis(part, order, axis=-1), mx.take_along_axis(vals, order, axis=-1)


def _truncate(ids: mx.array, vals: mx.array, top_p: float, absolute: bool) -> tuple:
    """Sorted rows -> (DistBatch, covered): keep the smallest prefix with top_p of the mass (of
    the row's total, or of 1 when ``absolute``: the rows are the top of normalized rows)."""
    c = mx.cumsum(mx.exp(vals), axis=-1)
    m = vals.shape[-1]
    total = c[:, -1:]
    if top_p < 1:
        thresh = top_p if absolute else top_p * total
        keep = mx.minimum(mx.sum(c < thresh, axis=-1, keepdims=True) + 1, m)
        covered = c[:, -1] >= top_p if absolute else mx.ones(c.shape[0], dtype=mx.bool_)
    else:
        keep = mx.sum(mx.isfinite(vals), axis=-1, keepdims=True)
        covered = mx.ones(c.shape[0], dtype=mx.bool_)
    keep = mx.maximum(keep, 1)
    kept_mass = mx.take_along_axis(c, keep - 1, axis=-1)
    inside = mx.arange(m)[None, :] < keep
    logp = mx.where(inside, vals - mx.log(kept_mass), -mx.inf)
    batch = DistBatch(logp, (keep[:, 0] - 1).astype(mx.int32), ids.astype(mx.int32))
    return batch, covered


def _nucleus(x: mx.array, top_p: float, m: int, also: tuple = ()) -> DistBatch:
    """Top-p of normalized rows from their m largest entries; the rows whose nucleus is larger
    are redone with _GROWTH x m candidates (up to a full sort), alone."""
    v = x.shape[-1]
    ids, vals = _sorted_top(x, m)
    batch, covered = _truncate(ids, vals, top_p, absolute=m < v)
    mx.eval(covered, batch.logp, batch.last, batch.ids, *also)  # one sync, with ``also``
    short = np.flatnonzero(~np.array(covered))
    if m >= v or short.size == 0:
        return batch
    more = _nucleus(x[mx.array(short)], top_p, min(v, m * _GROWTH))
    # merge: pad the batch to the wider rows (-inf log-probs), put the redone rows in place
    width = more.logp.shape[1]
    pad = width - m
    logp = mx.concatenate([batch.logp, mx.full((x.shape[0], pad), -mx.inf)], axis=1)
    ids = mx.concatenate([batch.ids, mx.zeros((x.shape[0], pad), dtype=mx.int32)], axis=1)
    at = mx.array(short)
    logp[at], ids[at] = more.logp, more.ids
    last = batch.last
    last[at] = more.last
    out = DistBatch(logp, last, ids)
    mx.eval(out.logp, out.last, out.ids)
    return out


def process_batch(
    logp,
    temp: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    *,
    normalized: bool = False,
    nucleus_candidates: int = DEFAULT_NUCLEUS_CANDIDATES,
    host_max: int = HOST_DRAW_MAX,
) -> tuple[DistBatch, np.ndarray]:
    """(B, V) log-probs (mx or numpy) -> (their truncated distributions, host bool array of the
    rows with a NaN or no finite entry). ``normalized``: the rows are log-softmax outputs (skips
    one logsumexp over the vocabulary). One device sync (more only when a nucleus outgrows
    ``nucleus_candidates``). Rows of at most ``host_max`` entries go through ``_process_host``
    (no sync when they come from the host)."""
    if np.shape(logp)[-1] <= host_max and len(np.shape(logp)) == 2:
        return _process_host(np.asarray(logp, dtype=np.float32), temp, top_k, top_p, normalized)
    x = mx.array(logp, dtype=mx.float32) if not isinstance(logp, mx.array) else logp
    if x.dtype != mx.float32:
        x = x.astype(mx.float32)
    if x.ndim != 2:
        raise ValueError(f"expected (B, V) log-probs, got shape {x.shape}")
    b, v = x.shape
    bad = mx.any(mx.isnan(x), axis=-1) | ~mx.any(x > -mx.inf, axis=-1)
    if temp == 0:
        ids = mx.argmax(x, axis=-1, keepdims=True).astype(mx.int32)
        batch = DistBatch(mx.zeros((b, 1)), mx.zeros((b,), dtype=mx.int32), ids)
        mx.eval(bad, batch.logp, batch.ids)
        return batch, np.array(bad)
    if temp != 1:
        x = x / temp
        normalized = False
    if top_k and top_k < v:
        ids, vals = _sorted_top(x, top_k)
        batch, _ = _truncate(ids, vals, top_p, absolute=False)
    elif top_p < 1:
        if not normalized:
            x = x - mx.logsumexp(x, axis=-1, keepdims=True)
        batch = _nucleus(x, top_p, min(v, max(1, nucleus_candidates)), also=(bad,))
        return _kept(batch, host_max), np.array(bad)
    else:
        if not normalized:
            x = x - mx.logsumexp(x, axis=-1, keepdims=True)
        batch = DistBatch(x, _last_finite(x))
    mx.eval(bad, batch.logp, batch.last, *(() if batch.ids is None else (batch.ids,)))
    return _kept(batch, host_max), np.array(bad)


def _lse(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(np.float32)
    return m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _process_host(x: np.ndarray, temp: float, top_k: int, top_p: float, normalized: bool):
    """``process_batch`` for small rows on the host, float32 numpy, step for step the device
    path (sorted top-k / top-p prefixes, the same thresholds); the batch keeps its host copy."""
    b, v = x.shape
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        bad = np.isnan(x).any(axis=-1) | ~(x > -np.inf).any(axis=-1)
        if temp == 0:
            ids = np.argmax(np.where(np.isnan(x), -np.inf, x), axis=-1)[:, None].astype(np.int32)
            return _host_batch(np.zeros((b, 1), np.float32), np.zeros(b, np.int32), ids), bad
        if temp != 1:
            x = (x / np.float32(temp)).astype(np.float32)
            normalized = False
        ids = None
        if top_k and top_k < v:
            ids = np.argsort(-x, axis=-1, kind="stable")[:, :top_k].astype(np.int32)
            vals = np.take_along_axis(x, ids, axis=-1)
        elif top_p < 1:
            if not normalized:
                x = (x - _lse(x)).astype(np.float32)
            ids = np.argsort(-x, axis=-1, kind="stable").astype(np.int32)
            vals = np.take_along_axis(x, ids, axis=-1)
        else:
            if not normalized:
                x = (x - _lse(x)).astype(np.float32)
            fin = np.isfinite(x)
            last = np.where(fin.any(-1), v - 1 - np.argmax(fin[:, ::-1], axis=-1), 0)
            return _host_batch(x, last.astype(np.int32), None), bad
        c = np.cumsum(np.exp(vals), axis=-1, dtype=np.float32)
        m = vals.shape[-1]
        if top_p < 1:
            keep = np.minimum(np.sum(c < top_p * c[:, -1:], axis=-1, keepdims=True) + 1, m)
        else:
            keep = np.sum(np.isfinite(vals), axis=-1, keepdims=True)
        keep = np.maximum(keep, 1)
        kept = np.take_along_axis(c, keep - 1, axis=-1)
        inside = np.arange(m)[None, :] < keep
        logp = np.where(inside, vals - np.log(kept), -np.inf).astype(np.float32)
    return _host_batch(logp, (keep[:, 0] - 1).astype(np.int32), ids), bad


def _host_batch(logp: np.ndarray, last: np.ndarray, ids: np.ndarray | None) -> DistBatch:
    with np.errstate(over="ignore"):
        cdf = np.cumsum(np.exp(logp), axis=-1, dtype=np.float32)
    batch = DistBatch(mx.array(logp), mx.array(last), None if ids is None else mx.array(ids))
    batch._host = (cdf, last, ids, logp)
    return batch


def _draw_host(batch: DistBatch, row: int, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cdf, last, ids, logp = batch.host()
    c, n = cdf[row], int(last[row])
    target = np.asarray(u, dtype=np.float32) * c[n]  # float32, as on the device
    idx = np.minimum(np.searchsorted(c, target, side="right"), n)
    tok = idx if ids is None else ids[row, idx]
    return tok.astype(np.int64), logp[row, idx].astype(np.float64)


def draw(
    requests: Sequence[tuple[NextTokenDist, np.ndarray]], host_draw_max: int = HOST_DRAW_MAX
) -> list[tuple[np.ndarray, ...]]:
    """For each (row, uniforms) request: (token ids, their log-probs), numpy. All device rows
    are served by one sync; uniforms are consumed in request order by the caller."""
    groups: dict[int, tuple[DistBatch, list[int]]] = {}
    out: list = [None] * len(requests)
    for j, (d, u) in enumerate(requests):
        if d.batch.width <= host_draw_max:
            out[j] = _draw_host(d.batch, d.row, u)
        else:
            groups.setdefault(id(d.batch), (d.batch, []))[1].append(j)
    if not groups:
        return out
    pending = []
    for batch, js in groups.values():
        rows = np.concatenate([np.full(len(requests[j][1]), requests[j][0].row) for j in js])
        us = np.concatenate([np.asarray(requests[j][1], dtype=np.float64) for j in js])
        r = mx.array(rows.astype(np.int32))
        lrows = batch.take_logp(rows)
        cdf = cumulative(lrows)  # (n, M): only the rows drawn from
        last = batch.last[r][:, None]
        target = mx.array(us.astype(np.float32))[:, None] * mx.take_along_axis(cdf, last, -1)
        idx = mx.minimum(mx.sum(cdf <= target, axis=-1, keepdims=True), last)
        lp = mx.take_along_axis(lrows, idx, axis=-1)[:, 0]
        ids = batch.take_ids(rows)
        tok = idx[:, 0] if ids is None else mx.take_along_axis(ids, idx, -1)[:, 0]
        pending.append((js, tok, lp))
    mx.eval(*[a for _, t, lp in pending for a in (t, lp)])
    for js, tok, lp in pending:
        tok, lp = np.array(tok).astype(np.int64), np.array(lp).astype(np.float64)
        pos = 0
        for j in js:
            n = len(requests[j][1])
            out[j] = (tok[pos : pos + n], lp[pos : pos + n])
            pos += n
    return out


# -- the former host path: float64 numpy, one row at a time (reference and bench "before") ----
@dataclass
class ReferenceDist:
    """A host distribution: log-probs over ``ids`` (all tokens if None)."""

    logp: np.ndarray
    ids: np.ndarray | None = None

    def sample(self, u: np.ndarray) -> np.ndarray:
        p = np.exp(self.logp.astype(np.float64))
        c = np.cumsum(p)
        idx = np.minimum(np.searchsorted(c, u * c[-1], side="right"), len(c) - 1)
        return idx if self.ids is None else self.ids[idx]

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.arange(self.logp.size) if self.ids is None else self.ids
        keep = np.isfinite(self.logp)
        return ids[keep], self.logp[keep].astype(np.float64)


def reference_process(logp: np.ndarray, temp: float, top_k: int, top_p: float) -> ReferenceDist:
    """Temperature, then top-k, then top-p; renormalized (float64 numpy, one row)."""
    logp = np.asarray(logp, dtype=np.float64)
    if temp == 0:
        out = np.full(logp.shape, -np.inf)
        out[int(np.argmax(logp))] = 0.0
        return ReferenceDist(out.astype(np.float32))
    if temp != 1.0:
        logp = logp / temp
    ids = None
    if top_k and top_k < logp.size:
        ids = np.argpartition(-logp, top_k - 1)[:top_k]
    if top_p < 1.0:
        cand = ids if ids is not None else np.arange(logp.size)
        order = cand[np.argsort(-logp[cand], kind="stable")]
        p = np.exp(logp[order] - np.max(logp[order]))
        c = np.cumsum(p) / p.sum()
        keep = int(np.searchsorted(c, top_p, side="left")) + 1
        ids = np.sort(order[:keep])
    elif ids is not None:
        ids = np.sort(ids)
    sub = logp if ids is None else logp[ids]
    m = np.max(sub)
    sub = sub - (m + math.log(np.sum(np.exp(sub - m))))
    return ReferenceDist(sub.astype(np.float32), ids)
