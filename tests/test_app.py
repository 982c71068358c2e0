"""The web app end to end, headless: `mlx-vgb app --model TINY` in a subprocess, driven by
gradio_client (runs stream, backtracks arrive, cancel works, bad settings give a message,
compare mode, concurrent sessions do not mix)."""

import html
import re
import threading
import time

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from test_app_support import running_app, save_tiny_model_folder

# a letter-avoidance run on the tiny model that backtracks (fixed seed: deterministic)
LETTER_RUN = dict(
    prompt="Write a one-sentence story.",
    verifier="no-letter",
    letter="e",
    alpha=0.3,
    sampler="vgb",
    choice="self-normalized",
    max_tokens=32,
    max_steps=2000,
    seed=0,
)
# a run that cannot end soon: 300 letters or spaces and nothing else, no step limit
LONG_RUN = dict(
    prompt="Write a long story.",
    verifier="regex",
    pattern="[a-z ]{300,}",
    sampler="vgb",
    max_tokens=400,
    max_steps=0,
    seed=1,
)

(STATUS, COMMAND, SUMMARY, DEPTH, LIVE, STATS, FINAL, TREE, B_LIVE, B_STATS, B_FINAL, B_TREE) = (
    range(12)
)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    model = save_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")
    with running_app(model, "--update-interval", "0") as (url, _):
        yield url


def client(url):
    return gradio_client.Client(url, verbose=False)


def stat(stats_html, name):
    m = re.search(rf'data-stat="{re.escape(name)}">([^<]*)<', stats_html)
    assert m, (name, stats_html)
    return m.group(1)


def wait_outputs(job, n, timeout_s=30):
    end = time.monotonic() + timeout_s
    while len(job.outputs()) < n and not job.done():
        assert time.monotonic() < end, "the run streamed nothing"
        time.sleep(0.02)


def wait_idle(c, timeout_s=10):
    end = time.monotonic() + timeout_s
    while True:
        s = c.predict(api_name="/status")
        if s["active_runs"] == 0 or time.monotonic() > end:
            return s
        time.sleep(0.05)


def test_a_run_streams_with_backtracks_and_ends_clean(app_url):
    c = client(app_url)
    job = c.submit(**LETTER_RUN, api_name="/run")
    job.result(timeout=60)
    outs = job.outputs()
    assert len(outs) > 5  # streamed, not one final answer
    running = [o for o in outs if "running" in str(o[STATUS])]
    assert running, "no update arrived while the walk was running"
    # a backtrack shows up while the run is still going, as a struck-through span
    assert any("<del" in o[LIVE] for o in running)
    depths = [int(re.search(r'data-backtracks="(\d+)"', o[DEPTH]).group(1)) for o in running]
    assert max(depths) > 0 and depths == sorted(depths)
    last = outs[-1]
    assert "done" in last[STATUS] and "vgb passes" in last[STATUS]
    assert 'data-verdict="passes"' in last[STATS]
    assert stat(last[STATS], "reached leaf") == "yes"
    assert int(stat(last[STATS], "backtracks")) > 0
    assert int(stat(last[STATS], "forward tokens")) > 0
    final = last[FINAL]
    assert final and "e" not in final.lower()  # the final text is clean and obeys the rule
    kept = re.sub(r"<del[^>]*>.*?</del>", "", last[LIVE], flags=re.DOTALL)
    assert re.sub(r"<[^>]+>", "", kept).replace("&#x27;", "'") == final
    assert "mlx-vgb generate" in outs[0][COMMAND] and "no-letter:e" in outs[0][COMMAND]


def test_cancel_stops_the_run_promptly_and_the_next_run_works(app_url):
    c = client(app_url)
    job = c.submit(**LONG_RUN, api_name="/run")
    wait_outputs(job, 4)
    assert c.predict(api_name="/status")["active_runs"] == 1
    t0 = time.monotonic()
    out = c.predict(api_name="/cancel")
    assert "cancelled" in out[STATUS] and stat(out[STATS], "status") == "cancelled"
    s = wait_idle(c)
    assert s["active_runs"] == 0 and s["cancelled_runs"] >= 1
    assert time.monotonic() - t0 < 5
    n = len(job.outputs())
    time.sleep(0.5)
    assert len(job.outputs()) == n  # nothing streams after the cancel
    again = c.predict(**LETTER_RUN, api_name="/run")
    assert "done" in again[STATUS] and stat(again[STATS], "reached leaf") == "yes"


def test_closing_the_client_job_also_stops_the_walk(app_url):
    c = client(app_url)
    job = c.submit(**LONG_RUN, api_name="/run")
    wait_outputs(job, 4)
    job.cancel()
    assert wait_idle(c)["active_runs"] == 0


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(prompt="", verifier="none"), "prompt is empty"),
        (dict(prompt="hi", verifier="regex", pattern="("), "bad regex"),
        (dict(prompt="hi", block="lines"), "block must be"),
        (dict(prompt="hi", verifier="no-letter", letter="ab"), "one letter"),
        (dict(prompt="hi", generator="local MLX folder", model_path="/no/such/model"), "no folder"),
        (dict(prompt="hi", verifier="python function", function="no_such_mod:f"), "cannot import"),
    ],
)
def test_bad_settings_give_a_message_not_a_traceback(app_url, settings, message):
    out = client(app_url).predict(**settings, api_name="/run")
    assert 'class="vgb-error"' in out[STATUS] and message in out[STATUS]
    assert "Traceback" not in str(out)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(candidates=0), "Candidates K: must be a whole number >= 1"),
        (dict(top_k=-5), "top-k: must be a whole number >= 0"),
        (dict(drift=0), "Drift lambda: must be in (0, 1]"),
    ],
)
def test_out_of_range_numbers_get_a_message_naming_the_field(app_url, settings, message):
    out = client(app_url).predict(**dict(LETTER_RUN, **settings), api_name="/run")
    assert 'class="vgb-error"' in out[STATUS] and html.escape(message) in out[STATUS], out[STATUS]


def test_compare_mode_runs_the_baseline_on_the_same_prompt_and_seed(app_url):
    c = client(app_url)
    both = c.predict(**LETTER_RUN, compare=True, baseline="plain", api_name="/run")
    alone = c.predict(**dict(LETTER_RUN, sampler="plain"), api_name="/run")
    assert "(baseline)" in both[B_STATS] and stat(both[B_STATS], "backtracks") == "0"
    assert both[B_FINAL] == alone[FINAL]  # same prompt, same seed, same baseline text
    assert stat(both[STATS], "reached leaf") == "yes" and "e" not in both[FINAL].lower()
    # plain is scored by the selected verifier too: its text has an "e", so it fails
    assert "e" in both[B_FINAL].lower() and 'data-verdict="fails"' in both[B_STATS]
    assert "vgb passes, plain fails" in both[SUMMARY]
    assert 'data-series="2"' in both[DEPTH]  # both depth traces on one axis
    assert 'data-stat="forward ratio"' in both[SUMMARY]


def test_concurrent_sessions_each_get_their_own_run(app_url):
    seeds = [0, 1, 2]
    alone = {
        s: client(app_url).predict(**dict(LETTER_RUN, seed=s), api_name="/run")[FINAL]
        for s in seeds
    }
    assert len(set(alone.values())) > 1
    shared = client(app_url).predict(api_name="/status")["engine"]["shared"]
    clients = {s: client(app_url) for s in seeds}  # connected first: the runs start together
    for _ in range(3):  # overlap is up to the OS scheduler: a loaded machine may serialize one
        got = {}
        start = threading.Barrier(len(seeds))

        def run(seed):
            start.wait()
            got[seed] = clients[seed].predict(**dict(LETTER_RUN, seed=seed), api_name="/run")

        threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {s: got[s][FINAL] for s in seeds} == alone
        # the sessions' walks went through one batched engine and shared forwards
        if client(app_url).predict(api_name="/status")["engine"]["shared"] > shared:
            break
    else:
        pytest.fail("three sessions started together never shared a batched forward (3 tries)")


@pytest.mark.parametrize(
    "function, message",
    [
        ("tests.faulty_verifiers:crash_late", "crashed on purpose"),
        ("tests.faulty_verifiers:nan_late", "must be finite"),
    ],
)
def test_a_run_that_fails_midway_reports_it_and_the_app_stays_usable(app_url, function, message):
    c = client(app_url)
    out = c.predict(
        **dict(LETTER_RUN, verifier="python function", function=function), api_name="/run"
    )
    assert message in out[STATUS] and "Traceback" not in out[STATUS]
    assert "internal error" not in out[STATUS]
    assert wait_idle(c)["active_runs"] == 0
    again = c.predict(**LETTER_RUN, api_name="/run")
    assert stat(again[STATS], "reached leaf") == "yes"
