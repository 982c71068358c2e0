"""`mlx-vgb bench testcase_law` (#16 part 4): the task's tau and analysis on hand-written
responses, the prompts and their splits, TV / KL of mixture laws on hand-computable cases, the
report's numbers from given rows, and the quick mode end to end on a tiny model (a head trained
by `train-verifier --reward testcase_law`, every config through the engine, resume)."""

import json
import math

import numpy as np
import pytest

from mlx_vgb.bench import length_laws as L
from mlx_vgb.bench import testcase_law as bench
from mlx_vgb.errors import ConfigError
from mlx_vgb.tasks import testcase_law as task


def problem(function="append", n=3):
    return next(p for p in task.make_problems("eval", 8, n) if p.function == function)


def test_analysis_counts_asserts_list_lengths_distinct_tests_and_types():
    p = problem("append")
    f = p.name
    text = (
        f"assert {f}([1, 2], 3) == [1, 2, 3]\n"
        f"assert {f}([], 'a') == ['a']\n"
        "\n"
        f"assert  {f}([1, 2],3) == [1, 2, 3]\n"  # the first test again, other spacing
        f"assert {f}([5, 6, 7, 8], 5) == [5, 6, 7, 8, 5]\n"
    )
    a = task.analyse(text, f, p.reference, 3, complete=True)
    assert (a.tau, a.lines, a.asserts, a.passed) == (1.0, 4, 4, 4)
    assert a.list_lengths == [2, 0, 2, 4]
    assert a.distinct_tests == 3  # the repeated test counts once
    assert a.types == ["short/int/out", "empty/str/out", "short/int/out", "long/int/in"]
    assert a.distinct_types == 3
    # exactly-N: 4 asserts where 3 were asked for
    assert task.analyse(text, f, p.reference, 3, True, "exactly-n").tau == 0.0
    assert task.analyse(text, f, p.reference, 4, True, "exactly-n").tau == 1.0
    # one failing assert, a comment line: counted, not passed; tau 0; lengths of parsed tests
    bad = text + f"assert {f}([1], 2) == [2, 1]\n# done\n"
    b = task.analyse(bad, f, p.reference, 3, complete=True)
    assert (b.tau, b.lines, b.asserts, b.passed) == (0.0, 6, 5, 4)
    assert b.list_lengths == [2, 0, 2, 4, 1] and b.distinct_tests == 3
    # a response cut at the horizon is not finished: tau 0 even when its lines pass
    assert task.analyse(text, f, p.reference, 3, complete=False).tau == 0.0
    assert task.analyse("", f, p.reference, 3, complete=True).tau == 0.0
    # an assert of another form is an assert with the type "other" and no list length
    c = task.analyse(f"assert len({f}([1], 2)) == 2\n", f, p.reference, 3, True)
    assert (c.tau, c.asserts, c.list_lengths, c.types) == (1.0, 1, [], ["other"])
    # more than D = 2N + 2 line actions (the fence's included): tau 0, however good the lines
    long = "".join(f"assert {f}([{i}], 0) == [{i}, 0]\n" for i in range(8))  # 8 lines + fence
    assert task.default_max_actions(3) == 8
    assert task.analyse(long, f, p.reference, 3, True).actions == 9
    assert task.analyse(long, f, p.reference, 3, True).tau == 0.0
    assert task.analyse(long, f, p.reference, 3, True, max_actions=9).tau == 1.0
    assert task.analyse(long, f, p.reference, 3, True, actions=8).tau == 1.0


def test_line_actions_follow_the_tree_and_the_walks_pad_to_d():
    acts = task.CappedLines(frozenset({10, 99}), max_len=3, depth=5)  # 10: newline, 99: EOS
    assert task.line_actions([1, 2, 10, 3, 10, 99], acts) == 3  # two lines, then the EOS action
    assert task.line_actions([1, 2, 3, 4, 10], acts) == 2  # a line cut at max_len = 3 tokens
    assert task.line_actions([1, 10, 2], acts) == 2  # an unfinished last line is an action
    assert acts.max_depth(160) == 5 and acts.max_depth(4) == 4  # D, never above the horizon
    with pytest.raises(ConfigError, match="depth"):
        task.CappedLines(frozenset({10}), depth=0)


def test_vgb_padded_to_the_cap_samples_pi_star_with_the_exact_value():
    # tokens: 0 a letter, 1 a newline, 2 EOS; lines of at most 2 tokens; tau = 1 for a response
    # that ends at EOS within D = 3 line actions. The practical walk at lambda = 1 with the
    # exact value, padded to D, samples pi*; without padding it prefers shallow leaves.
    from mlx_vgb import VGB, Rejection, toy

    acts = task.CappedLines(frozenset({1, 2}), max_len=2, depth=3)
    lm = toy.TabularLM.random(3, seed=4, eos_token_id=2, eos_prob=0.3)
    H = 6

    def tilt(y):
        return float(bool(y) and y[-1] == 2 and task.line_actions(y, acts) <= 3)

    target, value = toy.target(lm, tilt, H), toy.ExactValue(lm, tilt, H)
    law = {}
    for pad, n in ((True, 1500), (False, 600)):
        smp = VGB(horizon=H, actions=acts, choice=Rejection(4), pad=pad)
        law[pad] = toy.tv(
            toy.empirical([smp.sample(lm, value, seed=i).tokens for i in range(n)]), target
        )
    assert law[True] < 0.5 * (len(target) / 1500) ** 0.5 + 0.02  # 0.022 measured
    assert law[False] > 0.12  # 0.195 measured: the check can tell


def test_reward_reads_the_problem_back_from_the_prompt(tmp_path):
    from tiny_models import tiny_model_folder

    from mlx_vgb.generate import load
    from mlx_vgb.train_verifier import resolve_reward

    _, tok = load(str(tiny_model_folder(tmp_path / "tiny")))
    good = {
        "append": "assert {f}([1], 2) == [1, 2]\nassert {f}([], 0) == [0]\n",
        "prepend": "assert {f}([1], 2) == [2, 1]\n",
        "remove": "assert {f}([1, 2, 1], 1) == [2]\nassert {f}([], 3) == []\n",
        "count": "assert {f}([1, 2, 1], 1) == 2\nassert {f}(['a'], 'b') == 0\n",
    }
    bad = {
        "append": "assert {f}([1], 2) == [2, 1]\n",
        "prepend": "assert {f}([1], 2) == [1, 2]\n",
        "remove": "assert {f}([1, 2, 1], 1) == [2, 1]\n",
        "count": "assert {f}([1, 2, 1], 1) == 1\n",
    }
    reward, exact = resolve_reward("testcase_law"), resolve_reward("testcase_law_exact")
    assert reward.stop_text == "```"
    for fn in task.FUNCTIONS:
        p = problem(fn, n=2)
        prompt = task.chat_prompt(tok, p)
        assert prompt.endswith("```python\n") and "def f(a, b)" in prompt
        assert task.parse_prompt(prompt) == (p.name, p.reference, 2)
        assert reward(prompt, good[fn].format(f=p.name)) == 1.0, fn
        assert reward(prompt, bad[fn].format(f=p.name)) == 0.0, fn
        assert reward(prompt, good[fn].format(f=p.name) + "print('x')\n") == 0.0
        # another function's name is not a test of this one
        assert reward(prompt, good[fn].format(f="zzz")) == 0.0
        assert exact(prompt, good[fn].format(f=p.name)) == float(good[fn].count("\n") == 2)
    p = problem("append", n=2)
    prompt = task.chat_prompt(tok, p)
    # an unfinished last line (a cut by the token limit) fails
    assert reward(prompt, f"assert {p.name}([1], 2) == [1, 2]\nassert {p.name}([1]") == 0.0
    with pytest.raises(ConfigError, match="List N test cases"):
        task.parse_prompt("def foo(x): pass")


def test_prompts_are_distinct_and_the_splits_share_no_name():
    train = task.make_problems("train", 96, 4)
    ev = task.make_problems("eval", 8, 4)
    assert (
        len({p.name for p in train}) == 96
        and len({p.messages()[2]["content"] for p in train}) == 96
    )
    assert not {p.name for p in train} & {p.name for p in ev}
    assert {p.function for p in train} == set(task.FUNCTIONS)
    assert task.make_problems("eval", 8, 4) == ev  # same arguments, same problems
    assert not {p.name for p in task.make_problems("eval", 8, 4, seed=1)} & {p.name for p in ev}
    assert all(len(p.demo) == 4 for p in ev)
    for bad, msg in [
        (dict(split="test"), "unknown split"),
        (dict(n_tests=0), "N must be"),
        (dict(functions=["sort"]), "unknown functions"),
        (dict(count=10**6), "count"),
    ]:
        kw = dict(split="eval", count=4, n_tests=3) | bad
        with pytest.raises(ConfigError, match=msg):
            task.make_problems(**kw)


def test_tv_and_kl_of_equal_weight_mixtures_by_hand():
    # prompt a: target law {1: 1/2, 2: 1/2}; prompt b: {3: 1}. Mixture: {1: .25, 2: .25, 3: .5}
    target = {"a": [[1], [1], [2], [2]], "b": [[3]]}
    # the sample: a -> {1: 1}, b -> {3: 1/2, 4: 1/2}; mixture {1: .5, 3: .25, 4: .25}
    sample = {"a": [[1], [1]], "b": [[3], [4]]}
    values = L.support(target, sample)
    assert values == [1, 2, 3, 4]
    p = L.mixture(target, values, ["a", "b"])
    assert np.allclose(p, [0.25, 0.25, 0.5, 0])
    tv, kl = L.distances(target, sample)
    assert tv == pytest.approx(0.5 * (0.25 + 0.25 + 0.25 + 0.25))
    # the sample smoothed by +1/2 on 4 values: a: (2.5, .5, .5, .5) / 4, b: (.5, .5, 1.5, 1.5) / 4
    q = (np.array([2.5, 0.5, 0.5, 0.5]) + np.array([0.5, 0.5, 1.5, 1.5])) / 8
    want = 0.25 * math.log(0.25 / q[0]) + 0.25 * math.log(0.25 / q[1]) + 0.5 * math.log(0.5 / q[2])
    assert kl == pytest.approx(want)
    # unsmoothed, the missing value 2 makes KL infinite
    assert L.kl(p, L.mixture(sample, values, ["a", "b"])) == math.inf
    # several values per response (list lengths): pooled per prompt, then equal weights
    tv2, _ = L.distances({"a": [[0, 1], [1]], "b": [[2]]}, {"a": [[1, 1, 1]], "b": [[2]]})
    # a: {0: 1/3, 1: 2/3} vs {1: 1}, each prompt weighing 1/2: TV = 1/2 (1/6 + 1/6)
    assert tv2 == pytest.approx(1 / 6)
    # a prompt without values on one side is left out of both mixtures
    assert L.distances({"a": [[1]], "b": [[2]]}, {"a": [[1]], "b": []}) == (0.0, 0.0)
    assert all(math.isnan(x) for x in L.distances({"a": [[1]]}, {"b": [[1]]}))


def test_bootstrap_interval_floor_and_paired_closeness():
    rng = np.random.default_rng(1)
    target = {p: [[int(v)] for v in rng.integers(0, 4, 200)] for p in "ab"}
    same = {p: [list(r) for r in target[p][:60]] for p in "ab"}
    far = {p: [[3]] * 60 for p in "ab"}
    c = L.compare(target, {"same": same, "far": far}, reps=200, seed=0)
    assert c.tv["far"].lo > c.tv["same"].hi  # the intervals separate
    assert c.tv["same"].lo <= c.tv["same"].value <= c.tv["same"].hi
    # an exact sampler with 60 responses per prompt shows TV of the order of the floor
    assert 0 < c.tv["same"].floor < 0.2 and c.tv["same"].value < 3 * c.tv["same"].floor
    assert c.tv["far"].value > 0.6 and c.closer("same", "far") == 1.0
    assert c.closer("far", "same", "kl") == 0.0


def _row(config, pid, j, tau, asserts, lengths, fwd=10, finished=True):
    return bench.Row(
        config=config, prompt_id=pid, j=j, seed=j, text="", finished=finished, finish="stop",
        tau=tau, lines=asserts, asserts=asserts, passed=asserts if tau else 0,
        list_lengths=lengths, distinct_tests=asserts, distinct_types=1, tests=[], types=[],
        tokens=10, forward_tokens=fwd,
    )  # fmt: skip


def test_report_numbers_from_given_rows():
    probs = task.make_problems("eval", 2, 3)
    a, b = probs[0].id, probs[1].id
    cfg = dict(samples=2, n_tests=3, seed=0)
    pool = [
        _row("pool", a, 0, 0.0, 5, [1]),  # plain rows (j < samples): not pi* proposals
        _row("pool", a, 1, 1.0, 3, [1, 1, 1]),
        _row("pool", b, 0, 1.0, 3, [2, 2, 2]),
        _row("pool", b, 1, 0.0, 1, [9]),
    ]
    pool += [_row("pool", a, j, 1.0, 3, [1, 1, 1]) for j in (2, 3)]  # pi* on a: 3 asserts
    pool += [_row("pool", a, 4, 0.0, 7, [7])]  # rejected
    pool += [_row("pool", b, j, 1.0, 2, [0, 0]) for j in (2, 3, 4)]  # pi* on b: 2 asserts
    rows = [
        _row("vgb@d1", p, j, 1.0, n, [x] * n, fwd=100)
        for p, n, x in ((a, 3, 1), (b, 2, 0))
        for j in (0, 1)
    ]
    rows += [_row("action-rs", p, j, 1.0, 4, [5] * 4, fwd=50) for p in (a, b) for j in (0, 1)]
    rows += [_row("action-rs", a, 2, 1.0, 4, [5] * 4)]  # j >= samples: not used
    rows += [_row("vgb@d1", b, 5, 0.0, 0, [], finished=False)]
    sm = bench.summarize(cfg, probs, ["plain", "action-rs", "vgb@d1"], pool, rows, reps=50)
    ps = sm["pistar"]
    assert (ps["accepted"], ps["proposals"]) == (5, 6) and ps["per_prompt"] == {a: 2, b: 3}
    law = sm["laws"]["asserts"]
    assert law["pistar"] == {2: 0.5, 3: 0.5}
    assert law["tv"]["vgb@d1"]["value"] == pytest.approx(0.0)  # VGB's rows match pi* here
    assert law["tv"]["action-rs"]["value"] == pytest.approx(1.0)  # 4 asserts: disjoint
    # plain: {1: .25, 3: .5, 5: .25} against pi* {2: .5, 3: .5}
    assert law["tv"]["plain"]["value"] == pytest.approx(0.5)
    v = next(x for x in sm["verdicts"] if x["law"] == "list_lengths")
    assert v["tv_vgb"] == pytest.approx(0.0) and v["tv_ars"] == pytest.approx(1.0)
    assert v["p_closer_tv"] == 1.0
    c = sm["configs"]
    assert c["action-rs"]["responses"] == 4 and c["vgb@d1"]["fwd_ratio"] == pytest.approx(10.0)
    assert c["plain"]["correct"] == 0.5 and c["plain"]["exactly_n"] == 0.5


def test_config_names_and_bad_settings_are_refused():
    assert bench.FUNCTION_NAMES == tuple(task.FUNCTIONS)
    assert bench.parse_configs("plain, vgb@d1.0,vgb-nopad@d0.5,action-rs") == [
        ("plain", "plain", None),
        ("vgb@d1", "vgb", 1.0),
        ("vgb-nopad@d0.5", "vgb-nopad", 0.5),
        ("action-rs", "action-rs", None),
    ]
    for bad, msg in [
        ("beam", "unknown config"),
        ("vgb", "lambda"),
        ("vgb@d2", r"\(0, 1\]"),
        ("plain@d1", "only vgb"),
        ("", "empty"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            bench.parse_configs(bad)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model folder and a head trained on its rollouts of the training prompts
    (`bench testcase_law --write-prompts`, then `train-verifier --reward testcase_law`)."""
    from tiny_models import tiny_model_folder

    from mlx_vgb.bench import cli
    from mlx_vgb.train_verifier import main as train

    tmp = tmp_path_factory.mktemp("testcase_law")
    model = tiny_model_folder(tmp / "tiny", seed=3, context=4096)
    prompts = tmp / "train.jsonl"
    cli.main(["testcase_law", "--quick", "--model", str(model), "--write-prompts", str(prompts),
              "--count", "4"])  # fmt: skip
    rows = [json.loads(x) for x in prompts.read_text().splitlines()]
    assert len(rows) == 4 and all(r["id"].startswith("train-") for r in rows)
    train(["--model", str(model), "--prompts", str(prompts), "--reward", "testcase_law",
           "--out", str(tmp / "head"), "--work-dir", str(tmp / "rollouts"), "--num-rollouts", "2",
           "--max-tokens", "12", "--block", "lines", "--epochs", "2", "--holdout", "0",
           "--hidden-dims", "8", "--no-progress"])  # fmt: skip
    return dict(model=model, head=tmp / "head")


def test_quick_mode_end_to_end_on_a_tiny_model(tiny, tmp_path, capsys):
    from mlx_vgb.bench import cli

    out = tmp_path / "bench"
    args = ["testcase_law", "--quick", "--model", str(tiny["model"]), "--head", str(tiny["head"]),
            "--configs", "plain,action-rs,vgb@d1", "--out", str(out)]  # fmt: skip
    cli.main(args)
    pool = bench.read_rows(out / "pool.jsonl")
    rows = bench.read_rows(out / "rows.jsonl")
    # quick: 2 prompts; the pool grows to max_pool (8) per prompt since the random model
    # never succeeds; 2 walks per prompt and walk config
    assert len(pool) == 2 * 8 and {r.j for r in pool} == set(range(8))
    assert sorted((r.config, r.j) for r in rows) == sorted(
        (c, j) for c in ("action-rs", "vgb@d1") for _ in range(2) for j in range(2)
    )
    # each walk stayed within its budget (8 x plain's mean tokens on the prompt), up to the
    # last batch of K = 2 lines of at most 24 tokens
    cost = {
        p: np.mean([r.tokens for r in pool if r.prompt_id == p])
        for p in {r.prompt_id for r in pool}
    }
    assert all(r.forward_tokens <= 8 * cost[r.prompt_id] + 1 + 2 * 24 for r in rows)
    res = json.loads((out / "results.json").read_text())
    assert res["command"].startswith("mlx-vgb bench testcase_law --quick")
    assert set(res["summary"]["configs"]) == {"plain", "action-rs", "vgb@d1"}
    assert res["summary"]["pistar"]["proposals"] == 2 * (8 - 2)
    md = (out / "results.md").read_text()
    assert "Distance to pi*" in md and "Outcomes and cost" in md
    assert (out / "laws.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    cli.main(args)  # resumes: nothing left to sample, the same rows
    assert "to sample" not in capsys.readouterr().out
    assert len(bench.read_rows(out / "rows.jsonl")) == len(rows)
    # another N with the same folder is refused with a message that says what to do
    with pytest.raises(SystemExit):
        cli.main(args + ["--n-tests", "3"])
    assert "other settings" in capsys.readouterr().err
    # calibration: one batch per N, numbers written to calibration.md / .json
    cal = tmp_path / "cal"
    cli.main(["testcase_law", "--quick", "--model", str(tiny["model"]), "--calibrate", "2,3",
              "--out", str(cal)])  # fmt: skip
    lines = json.loads((cal / "calibration.json").read_text())["lines"]
    assert [x["N"] for x in lines] == [2, 3] and all(x["responses"] == 4 for x in lines)
    assert "| N | responses | success |" in (cal / "calibration.md").read_text()
    # the walks need a head
    with pytest.raises(SystemExit):
        cli.main(["testcase_law", "--quick", "--model", str(tiny["model"]), "--configs",
                  "vgb@d1", "--out", str(tmp_path / "nohead")])  # fmt: skip
    assert "need --head" in capsys.readouterr().err
