"""Smoke tests of `mlx-vgb bench TASK --quick`: each writes results.json (with its fields),
results.md (command line and date first) and its PNG plots."""

import json
from pathlib import Path

import pytest

from mlx_vgb.bench import abc, cli, report


def run_quick(task, tmp_path, *extra):
    out = tmp_path / task
    cli.main([task, "--quick", "--out", str(out), *extra])
    data = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert data["task"] == task
    assert data["command"].startswith(f"mlx-vgb bench {task} --quick")
    assert md.startswith(f"# `{task}` benchmark\n\nCommand: `{data['command']}`\n\nDate: ")
    assert data["date"] in md
    assert data["plots"]
    for p in data["plots"]:
        png = (out / p).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    return data, md


def test_abc_quick_writes_kl_for_both_samplers(tmp_path):
    data, md = run_quick("abc", tmp_path)
    cells = data["summary"]["cells"]
    assert set(cells) == {"H6_N500", "H6_N10000", "H8_N500", "H8_N10000"}
    for c in cells.values():
        for s in ("vgb", "action-rs", "vgb-lazy"):
            assert c[f"kl_{s}"] >= 0
        assert c["steps_vgb"] > c["steps_action-rs"] > 0
    # with the exact value both closed forms are pi*
    for ref in data["summary"]["reference"]:
        assert ref["kl_vgb_exact_value"] < 1e-9 and ref["kl_action_rs_exact_value"] < 1e-9
    assert {r["sampler"] for r in data["rows"]} == {"vgb", "action-rs", "vgb-lazy"}
    assert "KL(pi* || output law)" in md


def test_abc_closed_form_laws_match_the_samplers():
    from mlx_vgb import VGB, ActionLevelRS, Enumerate, toy

    lm = abc.make_lm("random", 1)
    v = abc.MonteCarloValue(lm, abc.no_aa, 3, 4, seed=5)
    laws = {"vgb": abc.vgb_law(lm, v, 3), "rs": abc.action_rs_law(lm, v, 3)}
    assert toy.tv(laws["vgb"], laws["rs"]) > 0.02  # the check can tell them apart
    n = 4000
    for name, s in (
        ("vgb", VGB(horizon=3, choice=Enumerate())),
        ("rs", ActionLevelRS(horizon=3, choice=Enumerate())),
    ):
        emp = toy.empirical([s.sample(lm, v, seed=i).tokens for i in range(n)])
        other = laws["rs" if name == "vgb" else "vgb"]
        assert toy.tv(emp, laws[name]) < toy.tv(emp, other)
        assert toy.tv(emp, laws[name]) < 0.5 * (len(laws[name]) / n) ** 0.5 + 0.03


def test_report_markdown_table_and_atomic_json(tmp_path):
    rep = report.Report(task="t", command="mlx-vgb bench t", config={"a": 1})
    rep.rows = [{"x": 1, "y": float("nan")}]
    rep.add_section("S", report.markdown_table([{"x": 1, "y": 0.5}]))
    rep.write(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] == [{"x": 1, "y": None}]
    assert "| x | y |" in (tmp_path / "results.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_task_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["nope"])
    assert e.value.code == 2
    assert "unknown task" in capsys.readouterr().err


def _has_default_model() -> bool:
    try:
        from mlx_vgb.models import is_available

        return is_available()
    except Exception:
        return False


needs_model = pytest.mark.skipif(
    not _has_default_model(), reason="default model not cached (mlx-vgb models pull)"
)


@needs_model
def test_letters_quick_reports_constraint_coherence_and_cost(tmp_path):
    data, _ = run_quick("letters", tmp_path)
    s = data["summary"]
    assert set(s) == {"plain", "action-rs", "vgb a=0.1"}
    for v in s.values():
        assert 0 <= v["satisfied"] <= 1 and 0 < v["distinct"] <= 1
        assert v["forward tok / out tok"] >= 1
    assert s["action-rs"]["satisfied"] == 1.0 and s["vgb a=0.1"]["satisfied"] == 1.0
    assert all(r["coherence"] < 0 for r in data["rows"])


@needs_model
def test_perf_quick_reports_ratios_against_mlx_lm(tmp_path):
    data, md = run_quick("perf", tmp_path)
    m = data["summary"]["model"]
    assert m["mlx_lm plain"]["wall / out tok vs mlx_lm"] == pytest.approx(1.0)
    assert m["vgb, separate verifier"]["verifier fwd / out tok"] > 0
    assert m["vgb, head on generator"]["verifier fwd / out tok"] == 0
    assert data["summary"]["python_overhead_per_step_over_model_forward"] > 0
    assert "Python overhead per walk step" in md


def test_testcases_verifier_checks_each_line_against_the_reference():
    from mlx_vgb.tasks.testcases import AssertLines

    v = AssertLines("f_abc", "def f_abc(lst):\n    return sorted(set(lst))\n")
    v.bind(lambda toks: "".join(chr(t) for t in toks))
    ok = "assert f_abc([2, 1, 2]) == [1, 2]\n"
    bad = "assert f_abc([2]) == [3]\n"
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    vals = v.value([enc(ok), enc(ok + bad), enc(ok + "assert f_abc([1]) == [1")])
    assert list(vals) == [1.0, 0.0, 1.0]  # the unfinished last line is not judged yet
    assert v.sandbox_calls == 1  # all new lines of a batch in one sandbox run
    assert list(v.tilt([enc(""), enc(ok)])) == [0.0, 1.0]  # at least one assert
    assert v.value([enc("print(1)\n")])[0] == 0.0  # not an assert: no sandbox run needed


def test_testcases_verifier_refuses_lines_that_could_reach_the_harness():
    from mlx_vgb.tasks.testcases import AssertLines

    v = AssertLines("f_abc", "def f_abc(lst):\n    return sorted(set(lst))\n")
    v.bind(lambda toks: "".join(chr(t) for t in toks))
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    good = "assert f_abc([2, 1]) == sorted([1, 2], reverse=False)\n"
    # a line that switches the asserts of the next (wrong) line off, and other escapes
    hostile = [
        "assert f_abc([1]) == [1] and (__import__('sys').settrace(lambda *a: None) or True)\n",
        "assert f_abc([1]).__class__ == list\n",
        "assert f_abc([1]) == [1] or exec('import sys')\n",
        "assert (lambda: True)() and f_abc([]) == []\n",
    ]
    wrong = "assert f_abc([2]) == [3]\n"
    assert v.value([enc(good)])[0] == 1.0
    for h in hostile:
        assert v.value([enc(h)])[0] == 0.0, h
        assert v.value([enc(h + wrong)])[0] == 0.0, h


@needs_model
def test_testcases_quick_reports_correct_rate_and_lengths(tmp_path):
    head = Path(__file__).resolve().parent.parent / "results" / "testcases" / "head"
    data, md = run_quick("testcases", tmp_path, "--head", str(head), "--pistar-samples", "4")
    s = data["summary"]
    assert set(s["samplers"]) == {"plain", "action-rs", "block-bon", "vgb", "vgb-head"}
    for v in s["samplers"].values():
        assert 0 <= v["correct"] <= 1 and v["forward tok / response"] >= 1
    assert s["pi_star_proposed"] == 4 and s["pi_star_source"] == "batched pi_ref samples"
    assert {"correct", "n_asserts", "distinct_correct", "forward_tokens"} <= set(data["rows"][0])
    assert "pi* length law" in md


def test_humaneval_visible_examples_become_asserts():
    from mlx_vgb.tasks.humaneval import body_of, visible_examples

    prompt = (
        'def strlen(string: str) -> int:\n    """ Length\n    >>> strlen(\'\')\n    0\n'
        '    >>> strlen(\'abc\')\n    3\n    """\n'
    )
    assert visible_examples(prompt) == "assert (strlen('')) == (0)\nassert (strlen('abc')) == (3)\n"
    assert body_of("\n    return len(string)\n\ndef g():\n    pass") == "\n    return len(string)\n"


@needs_model
def test_humaneval_quick_reports_pass_at_1_for_three_samplers(tmp_path):
    data, md = run_quick("humaneval", tmp_path)
    s = data["summary"]["samplers"]
    assert set(s) == {"plain", "vgb", "bon"}
    for v in s.values():
        assert 0 <= v["pass@1 (hidden)"] <= 1 and 0 <= v["syntax valid"] <= 1
    assert data["summary"]["bon_n"] >= 2
    assert "not the full set" in md


def test_testcases_reward_and_training_prompts_match_the_benchmark():
    from mlx_vgb.tasks.testcases import make_problem, parse_prompt, reward, training_prompts

    prob = make_problem(0, 0)
    name, ref = parse_prompt(prob["prompt"])
    assert (name, ref) == (prob["name"], prob["reference"])
    ok, bad = f"assert {name}([2, 1, 2]) == [1, 2]\n", f"assert {name}([]) == [1]\n"
    assert reward(prob["prompt"], ok + ok + "\nanything after the blank line") == 1.0
    assert reward(prob["prompt"], ok + bad + "\n") == 0.0
    assert reward(prob["prompt"], ok + "assert " + name + "([1]) == [") == 1.0  # cut line dropped
    assert reward(prob["prompt"], "\n\n") == 0.0  # no assert at all
    rows = training_prompts(3, eval_seed=0, max_tokens=48)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    bench = {make_problem(i, 0)["prompt"] for i in range(4)}
    assert not bench & {r["prompt"] for r in rows}  # never the benchmark's own prompts
    assert {r["max_tokens"] for r in rows} == {48}


def _shard(folder, task_ids, rows, **cfg):
    from mlx_vgb.bench.report import environment

    folder.mkdir()
    config = dict(problems=0, samples=1, horizon=64, bon_n=16, task_ids=task_ids)
    config.update(cfg)
    (folder / "shard.json").write_text(
        json.dumps(
            {
                "command": f"mlx-vgb bench humaneval --shard x --out {folder}",
                "config": config,
                "environment": environment(),
            }
        )
    )
    with open(folder / "rows.jsonl", "w") as f:
        for sampler, tid, passed in rows:
            f.write(
                json.dumps(
                    dict(
                        sampler=sampler,
                        task_id=tid,
                        seed=0,
                        body="",
                        syntax_ok=True,
                        visible_pass=passed,
                        hidden_pass=passed,
                        finish="stop",
                        forward_tokens=10,
                        steps=1,
                        backtracks=0,
                        wall_s=1.0,
                    )
                )
                + "\n"
            )
        f.write('{"sampler": "vgb", "task_')  # a row torn by a kill


def test_humaneval_merge_joins_shards_and_drops_unfinished_problems(tmp_path, capsys):
    a, b = "HumanEval/0", "HumanEval/1"
    _shard(tmp_path / "s0", [a], [("plain", a, True), ("vgb", a, False), ("bon", a, True)])
    _shard(tmp_path / "s1", [b], [("plain", b, False), ("vgb", b, True)])  # bon cut off
    cli.main(
        [
            "humaneval",
            "--merge",
            str(tmp_path / "s0"),
            str(tmp_path / "s1"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    data = json.loads((tmp_path / "m" / "results.json").read_text())
    assert data["config"]["task_ids"] == [a] and data["config"]["planned_problems"] == 2
    s = data["summary"]["samplers"]
    assert s["plain"]["pass@1 (hidden)"] == 1.0 and s["vgb"]["pass@1 (hidden)"] == 0.0
    assert {r["task_id"] for r in data["rows"]} == {a}
    md = (tmp_path / "m" / "results.md").read_text()
    assert "1 of 2 planned problems" in md and "--shard x" in md
    _shard(tmp_path / "s2", [b], [], horizon=32)
    with pytest.raises(SystemExit):
        cli.main(
            [
                "humaneval",
                "--merge",
                str(tmp_path / "s0"),
                str(tmp_path / "s2"),
                "--out",
                str(tmp_path / "m2"),
            ]
        )
    # a rerun resumes only a run with the same settings (before any model is loaded)
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(
            [
                "humaneval",
                "--problems",
                "0",
                "--bon-n",
                "16",
                "--horizon",
                "48",
                "--out",
                str(tmp_path / "s0"),
            ]
        )
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["humaneval", "--problems", "0", "--shard", "0/2", "--out", str(tmp_path / "x")])
    assert e.value.code == 1 and "--bon-n" in capsys.readouterr().err
