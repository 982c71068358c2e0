"""Monte Carlo rollouts from pi_ref, written to a JSONL file as they finish and resumable.

Each prompt gets ``n`` rollouts; rollout k of prompt ``id`` draws its tokens with uniforms from
``numpy.random.default_rng([seed, hash(id), k])`` (inverse-CDF sampling), so its result does not
depend on batching, on the order of the work or on an interruption: a re-run skips every
(prompt id, k) already in the file and computes only the rest, and the finished file equals an
uninterrupted run. Batches are written whole (then flushed and fsynced); a line cut off by a
kill is dropped on resume. A sidecar ``<file>.meta.json`` holds the settings; resuming with
other settings is refused.

Batches group prompts of one token length so the KV cache needs no padding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from .errors import ConfigError
from .resume import settings_diff

DEFAULT_ROLLOUTS = 8
DEFAULT_ROLLOUT_BATCH = 256
DEFAULT_MAX_TOKENS = 64

Reward = Callable[[str, str], float]


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    max_tokens: int | None = None  # per-prompt horizon; None: the run's default


@dataclass
class Rollout:
    prompt_id: str
    index: int  # k: rollout k of this prompt
    prompt_ids: list[int]
    completion_ids: list[int]  # keeps the final EOS when there is one
    completion: str  # text of the completion before EOS
    reward: float
    finish_reason: str  # "stop" (EOS) or "length"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """JSONL, one object per line: ``{"prompt": str, "id": str (optional), "max_tokens": int
    (optional)}``. Missing ids become the line number."""
    out, seen = [], set()
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{i + 1}: not valid JSON ({e})") from e
            if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
                raise ConfigError(f"{path}:{i + 1}: each line needs a string field 'prompt'")
            pid = str(d.get("id", i))
            if pid in seen:
                raise ConfigError(f"{path}:{i + 1}: duplicate prompt id {pid!r}")
            seen.add(pid)
            out.append(PromptRecord(pid, d["prompt"], d.get("max_tokens")))
    if not out:
        raise ConfigError(f"{path} holds no prompts")
    return out


def rollout_rng(seed: int, prompt_id: str, k: int) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, h, k])


def sample_completions(
    model,
    prompt_ids: Sequence[int],
    uniforms: np.ndarray,
    max_tokens: int,
    eos_token_ids: Iterable[int],
    temp: float = 1.0,
) -> list[list[int]]:
    """Complete one prompt ``len(uniforms)`` times in one batch: row r draws step t's token as
    the inverse CDF of pi_ref(.|prefix)^(1/temp) at ``uniforms[r, t]``. Stops a row at EOS or
    ``max_tokens`` tokens."""
    eos = frozenset(int(t) for t in eos_token_ids)
    return sample_batch(model, [list(prompt_ids)] * len(uniforms), uniforms, max_tokens, eos, temp)


def sample_batch(
    model,
    prompts: Sequence[Sequence[int]],
    uniforms: np.ndarray,
    max_tokens: int,
    eos: frozenset[int],
    temp: float = 1.0,
) -> list[list[int]]:
    """Batched ancestral sampling. Each distinct prompt is prefilled once (its rows share the
    cache); prompts of other lengths are left-padded into a ``BatchKVCache`` (per-row positions,
    padding masked); rows that have stopped leave the batch (their cache rows are dropped once
    a quarter of the batch has stopped), so the cost follows the tokens drawn, not the longest
    row. Row r's tokens are those it draws alone, up to float rounding between batch shapes."""
    B = len(prompts)
    first: dict[tuple[int, ...], int] = {}
    rows = [first.setdefault(tuple(p), len(first)) for p in prompts]
    unique = list(first)
    longest = max(len(p) for p in unique)
    pads = [longest - len(p) for p in unique]
    if any(pads):
        cache = [BatchKVCache(pads) for _ in range(len(make_prompt_cache(model)))]
        tokens = np.asarray([[0] * k + list(p) for p, k in zip(unique, pads)], dtype=np.int32)
    else:
        cache = make_prompt_cache(model)
        tokens = np.asarray(unique, dtype=np.int32)
    logits = model(mx.array(tokens), cache=cache)[:, -1, :]
    if len(first) < B:
        idx = mx.array(rows)
        logits = logits[idx]
        _take_rows(cache, idx)
    out: list[list[int]] = [[] for _ in range(B)]
    live = np.arange(B)  # batch row j is prompt row live[j]
    going = np.ones(B, dtype=bool)  # batch row j has not stopped
    for t in range(max_tokens):
        lg = np.array(logits.astype(mx.float32), dtype=np.float64)
        if temp != 1.0:
            lg = lg / temp
        p = np.exp(lg - lg.max(axis=1, keepdims=True))
        c = np.cumsum(p, axis=1)
        c /= c[:, -1:]
        tok = (c < uniforms[live, t : t + 1]).sum(axis=1)
        tok = np.minimum(tok, lg.shape[1] - 1)
        for j in np.flatnonzero(going):
            out[live[j]].append(int(tok[j]))
            if int(tok[j]) in eos:
                going[j] = False
        if not going.any() or t + 1 == max_tokens:
            break
        if going.sum() <= 0.75 * len(live):  # drop the stopped rows from the batch
            _take_rows(cache, mx.array(np.flatnonzero(going)))
            live, tok, going = live[going], tok[going], going[going]
        logits = model(mx.array(tok.astype(np.int32)[:, None]), cache=cache)[:, -1, :]
    return out


def _take_rows(cache: list, idx: mx.array) -> None:
    """Keep (or repeat) batch rows ``idx`` of every layer's KV cache, in place."""
    for c in cache:
        if isinstance(c, BatchKVCache):
            c.filter(idx)
        elif isinstance(c, KVCache):
            c.keys, c.values = c.keys[idx], c.values[idx]
        else:
            raise ConfigError(f"rollouts need plain KV caches; this model has {type(c).__name__}")
    mx.eval(*[a for c in cache for a in (c.keys, c.values)])


def read_rollouts(path: str | Path, repair: bool = False) -> list[Rollout]:
    """Rollouts in a file; a last line cut off by a kill is ignored (and cut off the file when
    ``repair``)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for line in data[:end].decode().splitlines():
        if line.strip():
            out.append(Rollout(**json.loads(line)))
    return out


@dataclass
class RolloutRun:
    path: Path
    total: int  # rollouts in the file at the end
    computed: int  # rollouts computed by this call
    skipped: int  # rollouts found finished in the file


def collect_rollouts(
    model,
    prompts: Sequence[PromptRecord],
    path: str | Path,
    *,
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
    reward: Reward,
    eos_token_ids: Iterable[int],
    n: int = DEFAULT_ROLLOUTS,
    seed: int = 0,
    temp: float = 1.0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    batch_size: int = DEFAULT_ROLLOUT_BATCH,
    settings: dict | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    done_elsewhere: Iterable[tuple[str, int]] = (),
) -> RolloutRun:
    """Run the rollouts missing from ``path`` and append them, batch by batch.

    ``reward(prompt_text, completion_text) -> float`` scores a finished rollout (the completion
    text excludes the final EOS and keeps other special tokens). ``settings`` (JSON-able) are
    stored in the sidecar and must match on resume. ``on_batch(rollouts_in_file)`` is called
    after each batch is on disk. ``done_elsewhere``: (prompt id, k) pairs finished in other
    files (other ranks' shards), skipped too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eos = frozenset(int(t) for t in eos_token_ids)
    if not eos:
        raise ConfigError("rollouts need an end-of-sequence token id (eos_token_ids)")
    meta = {"seed": seed, "n": n, "temp": temp, "max_tokens": max_tokens, **(settings or {})}
    meta_path = path.with_name(path.name + ".meta.json")
    if path.exists() and meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            diff = settings_diff(old, meta)
            raise ConfigError(
                f"{path} was collected with other settings {diff} (old, new); pass the same "
                "settings to resume, or choose another rollouts file"
            )
    meta_path.write_text(json.dumps(meta, indent=2))

    done = {(r.prompt_id, r.index) for r in read_rollouts(path, repair=True)}
    done |= set(done_elsewhere)
    skipped = sum(1 for p in prompts for k in range(n) if (p.id, k) in done)
    # batches over prompts sorted by length (little padding); a prompt's rollouts stay together
    queue: list[tuple[PromptRecord, list[int], int]] = []
    for p in prompts:
        ids = encode(p.prompt)
        queue += [(p, ids, k) for k in range(n) if (p.id, k) not in done]
    queue.sort(key=lambda job: len(job[1]))
    todo = len(queue)
    bar = None
    if progress and todo:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n * len(prompts), initial=skipped, unit="rollout", desc="rollouts")
        except ImportError:  # pragma: no cover
            bar = None
    computed = 0
    with open(path, "a") as f:
        for s in range(0, len(queue), batch_size):
            chunk = queue[s : s + batch_size]
            horizon = max(p.max_tokens or max_tokens for p, _, _ in chunk)
            u = np.stack([rollout_rng(seed, p.id, k).random(horizon) for p, _, k in chunk])
            outs = sample_batch(model, [ids for _, ids, _ in chunk], u, horizon, eos, temp)
            lines = []
            for (p, ids, k), toks in zip(chunk, outs):
                toks = toks[: p.max_tokens or max_tokens]
                stop = bool(toks) and toks[-1] in eos
                text = decode(toks[:-1] if stop else toks)
                r = Rollout(
                    p.id,
                    k,
                    list(ids),
                    toks,
                    text,
                    float(reward(p.prompt, text)),
                    "stop" if stop else "length",
                )
                lines.append(r.to_json() + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            computed += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if on_batch is not None:
                on_batch(skipped + computed)
    if bar is not None:
        bar.close()
    return RolloutRun(path, skipped + computed, computed, skipped)
