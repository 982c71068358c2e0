"""A bound on the memory of large next-token rows (``mlx_vgb.dist.set_row_memory``): rows past it
go to a temporary file and come back bit for bit, so every sampler gives the same tokens,
log-probs and costs as without a bound, while the rows held in memory stay under it."""

import gc
import re

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import even_token_verifier, tiny_llama

from mlx_vgb import VGB, ActionLevelRS, Enumerate, Rejection, dist
from mlx_vgb.engine import Engine
from mlx_vgb.errors import ConfigError
from mlx_vgb.lm import MLXLanguageModel

VOCAB = 600  # wider than HOST_DRAW_MAX: the device rows a real vocabulary gives
PROMPTS = [(1, 5, 9, 2), (3, 4), (7, 7, 8, 1, 2, 6, 5)]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=3, vocab=VOCAB)


@pytest.fixture(autouse=True)
def no_bound():
    dist.set_row_memory(None)
    yield
    dist.set_row_memory(None)


SAMPLERS = {
    "vgb-rejection": lambda: VGB(horizon=10, choice=Rejection(2), drift=0.7, temp=0.7),
    "vgb-top-p": lambda: VGB(horizon=10, choice=Rejection(2), drift=0.7, top_p=0.9),
    "vgb-enumerate-top-k": lambda: VGB(horizon=6, choice=Enumerate(), top_k=300, drift=0.7),
    "action-rs": lambda: ActionLevelRS(horizon=10, choice=Rejection(3), temp=0.7),
}


def _check_accounting(spill):
    """``held`` is the bytes of the batches listed in memory, none of them spilled."""
    spill._drain()
    live = [sp for _, sp in spill.live.values()]
    assert spill.held == sum(sp["bytes"] for sp in live) >= 0
    assert not any(sp["spilled"] for sp in live)
    assert spill.held <= spill.limit


def _runs(model, make):
    """Three walks batched in the engine, and one alone: (text tokens, stats) of each."""
    smp = make()

    def one(prompt, seed):
        r = smp.sample(MLXLanguageModel(model), even_token_verifier(), prompt=prompt, seed=seed)
        s = r.stats.as_dict()
        s.pop("wall_s")
        return tuple(r.tokens), r.finish_reason, r.tilt, s

    batched = Engine().run([lambda p=p, i=i: one(p, i) for i, p in enumerate(PROMPTS)])
    return batched + [one(PROMPTS[0], 7)]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_bound_changes_where_rows_live_not_what_is_sampled(model, name):
    want = _runs(model, SAMPLERS[name])
    for limit in (0, 3 * VOCAB * 4):  # every batch spilled; a few rows kept in memory
        dist.set_row_memory(limit)
        got = _runs(model, SAMPLERS[name])
        spill = dist.row_spill()
        assert got == want, f"limit {limit}: the samples or their costs changed"
        assert spill.spilled_batches > 0, "nothing went to the file"
        if limit == 0:  # every draw read its row back
            assert spill.read_rows > 0
        _check_accounting(spill)
        gc.collect()
        spill._drain()
        assert spill.held == 0 and not spill.live, "freed batches are still counted"


def test_rows_in_memory_stay_under_the_bound_and_file_slots_are_reused():
    """With the bound at 0, a walk's peak device memory does not grow with its tree (here a
    20,000-token vocabulary: 80 KB a row); once a run is freed its file slots are reused, so a
    second run of the same size does not grow the file."""
    wide = tiny_llama(seed=3, vocab=20_000)
    smp = VGB(horizon=128, choice=Rejection(2), drift=0.5)
    lm = MLXLanguageModel(wide)
    smp.sample(lm, even_token_verifier(), prompt=PROMPTS[0], seed=0)  # warm up kernels
    row = 20_000 * 4

    def run(seed):
        gc.collect()
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        r = smp.sample(lm, even_token_verifier(), prompt=PROMPTS[1], seed=seed)
        return r.stats.forward_tokens, mx.get_peak_memory() - base, tuple(r.tokens)

    free = run(1)
    dist.set_row_memory(0)
    spill = dist.row_spill()
    bound = run(1)
    gc.collect()
    size_after_first = spill.end
    again = run(1)
    gc.collect()
    assert free[0] >= 100, "the walk is too short to measure"
    assert free[0] == bound[0] == again[0] and free[2] == bound[2] == again[2]
    assert size_after_first >= free[0] * row  # every row went through the file
    assert spill.end == size_after_first, "a second run grew the file instead of reusing slots"
    spill._drain()
    assert spill.held == 0 and not spill.live, "freed batches are still counted"
    # without the bound the rows stay in memory to the end of the run; with it they do not
    # (what is left is the forward's and the draws' temporaries, whatever the tree's size)
    assert free[1] >= 0.8 * free[0] * row, (free, row)
    assert free[1] - bound[1] >= 0.7 * free[0] * row, (bound, free)


def test_bad_bounds_are_refused_with_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="number of GiB"):
        dist.parse_row_memory("lots")
    for bad in ("-1", "nan", "inf", ""):
        with pytest.raises(ValueError, match="number of GiB"):
            dist.parse_row_memory(bad)
    assert dist.parse_row_memory("1.5") == int(1.5 * 2**30)
    monkeypatch.setattr(dist, "_ENV_READ", False)
    monkeypatch.setenv("MLX_VGB_ROW_MEMORY", "six")
    for _ in range(2):  # every call, not only the first, until the variable is fixed
        with pytest.raises(ConfigError, match=r"MLX_VGB_ROW_MEMORY.*unset it"):
            dist.row_spill()
    monkeypatch.setattr(dist, "_ENV_READ", False)
    monkeypatch.setenv("MLX_VGB_ROW_MEMORY", "0.5")
    assert dist.row_spill().limit == 2**29
    with pytest.raises(dist.VGBError, match="row spill file in /nonexistent.*TMPDIR"):
        dist.set_row_memory(0, directory="/nonexistent/dir")


def test_a_failed_write_keeps_the_rows_and_says_what_to_do(monkeypatch):
    """A full disk mid-walk: one message naming the fix; the batch stays in memory, counted,
    and its slots go back to the free list."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, VOCAB)).astype(np.float32)
    dist.set_row_memory(0)
    spill = dist.row_spill()
    real = dist.os.pwrite

    def full(fd, data, off):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dist.os, "pwrite", full)
    with pytest.raises(dist.VGBError, match="No space left.*raise --row-memory"):
        dist.process_batch(x)
    monkeypatch.setattr(dist.os, "pwrite", real)
    assert len(spill.live) == 1 and spill.held == x.nbytes and spill.end > 0
    assert sum(len(v) for v in spill.free.values()) == spill.end // (VOCAB * 4)
    b, _ = dist.process_batch(x)  # the disk has room again: both batches go out
    assert b.logp is None and spill.held == 0 and spill.end <= 2 * x.nbytes


def test_spilling_while_other_threads_draw():
    """Threads make batches (spilling older ones at a small bound) while others draw from and
    read the supports of earlier batches, taking turns per call as the engine's jobs do (MLX
    itself is not driven from two threads at once), with the collector run in between: every
    draw equals the unbounded one, the accounting holds, and a deadlock fails the test instead
    of hanging it."""
    import threading

    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(2, VOCAB)).astype(np.float32) * 2 for _ in range(40)]
    us = rng.uniform(size=(40, 2, 5))

    def draws(i, b):
        out = dist.draw([(d, us[i, r]) for r, d in enumerate(b.rows())])
        return [tuple(map(tuple, o)) for o in out] + [
            tuple(map(tuple, d.support())) for d in b.rows()
        ]

    want = [draws(i, dist.process_batch(x, temp=0.8)[0]) for i, x in enumerate(xs)]
    dist.set_row_memory(3 * VOCAB * 4)
    turn = threading.Lock()  # the engine's turns
    batches, got, errors = [None] * len(xs), [None] * len(xs), []

    def make():
        try:
            for i, x in enumerate(xs):
                with turn:
                    batches[i] = dist.process_batch(x, temp=0.8)[0]
                    if i % 5 == 0:
                        gc.collect()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def use(parity):
        try:
            for i in range(parity, len(xs), 2):
                while batches[i] is None:
                    pass
                with turn:
                    got[i] = draws(i, batches[i])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=make)] + [
        threading.Thread(target=use, args=(k,)) for k in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    assert not errors, errors
    assert got == want
    spill = dist.row_spill()
    assert spill.spilled_batches > 20 and spill.read_rows > 20
    _check_accounting(spill)


def test_a_batch_freed_by_the_collector_inside_the_lock_does_not_deadlock():
    """The garbage collector may free a batch (a tree's nodes form cycles) while this thread
    holds the store's lock; its finalizer must not wait for that lock."""
    import threading

    dist.set_row_memory(10 * VOCAB * 4)
    spill = dist.row_spill()
    b, _ = dist.process_batch(np.zeros((1, VOCAB), np.float32))
    cycle = [b]
    cycle.append(cycle)  # reachable only through a cycle once ``b`` is dropped
    del b, cycle
    done = threading.Event()

    def collect_inside_the_lock():
        with spill.lock:
            gc.collect()
        done.set()

    t = threading.Thread(target=collect_inside_the_lock, daemon=True)
    t.start()
    assert done.wait(20), "deadlock: the finalizer waited for the lock its thread holds"
    _check_accounting(spill)
    assert spill.held == 0


def test_cli_row_memory_same_text_and_one_message_for_a_bad_value(tmp_path, capsys):
    """`mlx-vgb generate --row-memory 0` (every row through the file: the tiny model's 258-token
    vocabulary is a device row) prints what the unbounded run prints; a bad value is one
    message, no traceback."""
    from tiny_models import tiny_model_folder

    from mlx_vgb.generate import main

    folder = tiny_model_folder(tmp_path / "m", seed=3)
    args = ["--model", str(folder), "--max-tokens", "24", "--seed", "2", "--verbose"]
    args += ["-p", "Write a story", "--verifier", "no-letter:e"]  # a walk that backtracks
    outs = []
    for extra in ([], ["--row-memory", "0"]):
        dist.set_row_memory(None)
        main(args + extra)
        outs.append(re.sub(r"wall: [0-9.]+ s", "", capsys.readouterr().out))
    assert dist.row_spill().spilled_batches >= 20 and dist.row_spill().read_rows >= 20
    assert outs[0] == outs[1]
    assert re.search(r"backtracks: [1-9]", outs[0]) and re.search(r"forward tokens: \d\d", outs[0])
    with pytest.raises(SystemExit) as e:
        main(args + ["--row-memory", "much"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "--row-memory: row memory must be a number" in err
