"""Load test of the web app: N concurrent runs on a tiny model over loopback all finish with
their own results, and the server's memory returns to its baseline afterwards."""

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from test_app import FINAL, LETTER_RUN, STATS, stat  # noqa: E402
from test_app_support import running_app, save_tiny_model_folder  # noqa: E402

N = 6


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_concurrent_runs_finish_with_their_own_results_and_memory_returns(tmp_path):
    model = save_tiny_model_folder(tmp_path / "model")
    with running_app(model, "--update-interval", "0") as (url, proc):
        c = gradio_client.Client(url, verbose=False)
        run = dict(LETTER_RUN, max_tokens=24)
        # alone, one after the other (also warms the server up)
        alone = {s: c.predict(**dict(run, seed=s), api_name="/run")[FINAL] for s in range(N)}
        assert len(set(alone.values())) > N // 2  # the seeds really give different texts
        base = rss_mb(proc.pid)
        got, errors = {}, []

        def one(seed):
            try:
                got[seed] = gradio_client.Client(url, verbose=False).predict(
                    **dict(run, seed=seed), api_name="/run"
                )
            except Exception as e:  # reported below
                errors.append(repr(e))

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(s,)) for s in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        wall = time.monotonic() - t0
        assert not errors, errors
        assert {s: got[s][FINAL] for s in range(N)} == alone  # no cross-talk
        assert all(stat(got[s][STATS], "reached leaf") == "yes" for s in range(N))
        # once more: memory must not grow with the number of runs served
        for _ in range(1):
            threads = [threading.Thread(target=one, args=(s,)) for s in range(N)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
        assert not errors, errors
        time.sleep(1.0)
        after = rss_mb(proc.pid)
        status = c.predict(api_name="/status")
        print(
            f"\n{N} concurrent runs: {wall:.1f} s; server RSS {base:.0f} MB after warm-up, "
            f"{after:.0f} MB after {2 * N} more runs; status {status}"
        )
        assert status["active_runs"] == 0
        assert after - base < 40, (base, after)  # back to baseline (allocator slack: 40 MB)
