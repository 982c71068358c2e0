"""Draining a long benchmark (SIGUSR1): no new runs start, the runs in flight finish and their
rows are written, the command stops with status 75, and a rerun resumes."""

import os
import signal

import pytest

from mlx_vgb.bench import harness


@pytest.fixture
def drain():
    """The drain flag, cleared before and after; SIGUSR1's handler restored."""
    old = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    harness._DRAIN.clear()
    yield harness._DRAIN
    harness._DRAIN.clear()
    if old is not None:
        signal.signal(signal.SIGUSR1, old)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_asks_for_a_drain(drain):
    assert not harness.draining()
    assert harness.drain_on_signal()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert harness.draining()


def test_engine_samples_finishes_the_runs_in_flight_and_starts_no_more(drain):
    done = []

    def on_done(i, value):
        done.append((i, value))
        drain.set()  # asked while job 1 is still in the engine

    jobs = [lambda i=i: i * 10 for i in range(6)]
    with pytest.raises(harness.Drained, match="4 samples not started"):
        harness.engine_samples(jobs, concurrency=2, on_done=on_done)
    assert sorted(done) == [(0, 0), (1, 10)]  # both runs in flight finished, rows written


def test_engine_samples_is_unchanged_without_a_drain(drain):
    values, stats = harness.engine_samples([lambda i=i: i for i in range(5)], concurrency=2)
    assert values == list(range(5)) and stats["jobs"] == 5


def test_a_drained_bench_stops_with_status_75_and_a_rerun_resumes(drain, tmp_path, capsys):
    from mlx_vgb.bench.cli import main

    out = tmp_path / "fig1"
    drain.set()  # before the first prompt: nothing is drawn
    with pytest.raises(SystemExit) as e:
        main(["dyck_fig1", "--quick", "--out", str(out), "--fixed-only"])
    assert e.value.code == harness.DRAINED_STATUS == 75
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert not (out / "rows.jsonl").exists() or (out / "rows.jsonl").read_text() == ""
    drain.clear()
    main(["dyck_fig1", "--quick", "--out", str(out), "--fixed-only"])
    assert (out / "rows.jsonl").read_text().count("\n") > 0
