"""bench dyck_fig1: the domination check, the budget read-out of a sequence, the cost counts, the
engine's head switching, and the quick mode end to end (report, resume, refusals)."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from mlx_vgb.bench import dyck_fig1 as f1
from mlx_vgb.errors import ConfigError
from mlx_vgb.tasks import dyck


def pt(name, acc, dc):
    return {"method": name, "accuracy": acc, "distinct_correct": dc}


def test_domination_flags_a_dominated_point_and_not_the_others():
    v = pt("vgb", 0.8, 4.0)
    assert f1.dominates(pt("b", 0.9, 5.0), v)
    assert f1.dominates(pt("b", 0.8, 4.5), v)  # equal accuracy, more distinct
    assert not f1.dominates(pt("b", 0.8, 4.0), v)  # a tie dominates nothing
    assert not f1.dominates(pt("b", 0.95, 3.0), v)  # a trade-off
    assert not f1.dominates(pt("b", None, 0.0), v)  # no samples
    assert f1.dominates(pt("b", 0.5, 1.0), pt("vgb", None, 0.0))
    assert not f1.dominates(pt("b", 0.5, 0.0), pt("vgb", None, 0.0))
    base = [pt("a", 0.9, 5.0), pt("b", 0.95, 3.0), pt("c", 0.8, 4.0)]
    assert f1.dominated_by(v, base) == ["a"]


def test_verdicts_bootstrap_share_is_one_for_a_clearly_dominated_config():
    ms = [f1.Method("block-bon", "bon", 1, 2), f1.Method("vgb", "vgb")]
    # per prompt (samples, valid, distinct valid): bon better on every prompt
    pts = {"bon": [(10, 9, 5)] * 6, "vgb": [(10, 5, 2)] * 6}
    (v,) = f1.verdicts(pts, ms, np.random.default_rng(0))
    assert v["dominated_by"] == ["bon"] and v["boot_dominated"] == 1.0
    pts = {"bon": [(10, 9, 2)] * 6, "vgb": [(10, 5, 5)] * 6}  # a trade-off on every prompt
    (v,) = f1.verdicts(pts, ms, np.random.default_rng(0))
    assert v["dominated_by"] == [] and v["boot_dominated"] == 0.0


def test_budget_outcome_drops_the_overrunning_sample_and_flags_caps():
    row = {"o": "1201", "q": [10, 10, 10, 10], "t": [30, 30, 30, 30], "s": [5, 5, 5, 5]}
    assert f1.budget_outcome(row, "queries", 25) == (2, 2, 1, "")
    assert f1.budget_outcome(row, "tokens", 60) == (2, 2, 1, "")
    assert f1.budget_outcome(row, "tokens", 59) == (1, 1, 1, "")
    assert f1.budget_outcome(row, "steps", 100) == (4, 3, 2, "capped")
    stopped = {"o": "1t1", "q": [1, 1, 1], "t": [1, 1, 1], "s": [1, 9, 1]}
    assert f1.budget_outcome(stopped, "queries", 10) == (1, 1, 1, "ambiguous")
    assert f1.budget_outcome(stopped, "steps", 5) == (1, 1, 1, "")  # dropped for its steps
    assert f1.fixed_outcome(row, 3) == (3, 2, 1)  # "120": 2 valid, 1 distinct


@pytest.mark.parametrize(
    "kw",
    [
        {"budgets": "abc"},
        {"budgets": "0,512"},
        {"leaf": "oracle"},
        {"count": "seconds"},
        {"protocol": "fixed,race"},
        {"fixed_samples": 64, "max_samples": 16},
    ],
)
def test_bad_settings_are_config_errors(kw):
    a = dict(lm="x", verifier="y", prompts=None, leaf="head", protocol="fixed,budget")
    a |= dict(budgets=None, count="queries", fixed_samples=None, max_samples=None, seed=0)
    with pytest.raises(ConfigError):
        f1._settings(SimpleNamespace(**(a | kw)), quick=False)


def test_engine_matches_memo_lm_and_switches_heads(shipped):
    from mlx_vgb.bench.dyck_treelm import DyckTreeLM
    from mlx_vgb.bench.memo_lm import MemoTreeLM
    from mlx_vgb.verifier_format import HeadConfig, ValueHead

    model, _, _, head, _ = shipped
    other = ValueHead(HeadConfig(dims=[64, 8, 1], activation="relu", output="sigmoid"))
    prompt = [dyck.BOS] + dyck.encode("(([]")
    pre = [(), (0,), (0, 2), (1, 3, 2), (2, 5)]
    lm = DyckTreeLM(model, head)
    lm.begin(prompt)
    for h in (head, other, head):
        ref = MemoTreeLM(model, h, [dyck.EOS])
        ref.begin(prompt)
        lm.set_head(h)
        assert np.allclose(lm.values(pre), ref.values(pre), atol=1e-6)
        assert np.allclose(lm.logprobs(pre), ref.logprobs(pre), atol=1e-6)
    assert lm.run_cost == len(pre)
    lm.begin(prompt)
    lm.cap = 2
    from mlx_vgb.run import BudgetExhausted

    with pytest.raises(BudgetExhausted):
        lm.values(pre)


def test_plain_costs_one_query_token_and_step_per_action(shipped):
    from mlx_vgb.bench.dyck_treelm import DyckTreeLM
    from mlx_vgb.model_verifier import ValueHeadVerifier

    model, _, _, head, _ = shipped
    lm = DyckTreeLM(model, head)
    p = dyck.make_prompts(1, 7)[0]
    ids = [dyck.BOS] + dyck.encode(p["prompt"])
    seq = f1.draw_sequence(
        f1.Method("plain", "plain"),
        lm,
        ValueHeadVerifier(lm, tilt=dyck.completion_tilt),
        ids,
        p["max_tokens"],
        fixed=6,
        bmax=64,
        max_samples=6,
        seed=0,
        run_cap=8192,
    )
    assert len(seq["o"]) == 6 and set(seq["o"]) <= {"0", "1", "2"}
    assert seq["q"] == seq["t"] == seq["s"]  # one pi_ref query per action, no V^ asked
    assert all(1 <= s <= p["max_tokens"] for s in seq["s"])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One plain ``--quick`` run (the tests copy its folder before they touch it)."""
    from mlx_vgb.bench.cli import main

    out = tmp_path_factory.mktemp("fig1-quick") / "out"
    main(["dyck_fig1", "--quick", "--out", str(out)])
    return out


def test_quick_mode_reports_a_verdict_per_cell_and_resumes(quick_run, tmp_path, capsys):
    from mlx_vgb.bench.cli import main

    out = tmp_path / "fig1"
    shutil.copytree(quick_run, out)
    res = json.loads((out / "results.json").read_text())
    rows = (out / "rows.jsonl").read_text().splitlines()
    ms = f1.methods(quick=True)
    assert len(rows) == 2 * 2 * len(ms)  # prompts x leaf modes x methods
    v = res["summary"]["verdicts"]
    assert len(v) == 2 * (1 + 2 * 3)  # leaf modes x (fixed + budgets x counts)
    assert all(x["verdict"] in ("VGB dominated", "VGB not dominated") for x in v)
    # exact leaves: VGB never outputs an invalid completion
    for r in res["rows"]:
        if r["leaf"] == "exact" and r["family"] == "vgb" and r["accuracy"] is not None:
            assert r["accuracy"] == 1.0
    assert (out / "fig1_head.png").stat().st_size > 1000
    capsys.readouterr()
    before = (out / "rows.jsonl").read_bytes()
    main(["dyck_fig1", "--quick", "--out", str(out)])
    assert "0 sequences to draw" in capsys.readouterr().out
    assert (out / "rows.jsonl").read_bytes() == before
    with pytest.raises(SystemExit):  # other settings: refused, nothing appended
        main(["dyck_fig1", "--quick", "--out", str(out), "--max-samples", "32"])
    assert (out / "rows.jsonl").read_bytes() == before
    # a line still being written by a running process: --report-only reads around it and
    # leaves the file alone; a run that draws ends it first, so its appends stay parseable
    with open(out / "rows.jsonl", "ab") as f:
        f.write(b'{"leaf": "head", "prom')
    main(["dyck_fig1", "--quick", "--out", str(out), "--report-only"])
    assert (out / "rows.jsonl").read_bytes() == before + b'{"leaf": "head", "prom'
    main(["dyck_fig1", "--quick", "--out", str(out)])
    assert (out / "rows.jsonl").read_bytes() == before + b'{"leaf": "head", "prom\n'


def test_a_sequence_stopped_after_the_fixed_samples_and_resumed_is_one_sequence(shipped):
    from mlx_vgb.bench.dyck_treelm import DyckTreeLM
    from mlx_vgb.model_verifier import ValueHeadVerifier

    model, _, _, head, _ = shipped
    p = dyck.make_prompts(1, 13, dyck.OOD_TYPE_PROBS)[0]
    ids = [dyck.BOS] + dyck.encode(p["prompt"])
    kw = dict(fixed=4, bmax=200, max_samples=12, seed=0, run_cap=512)
    parts = 0
    for m in (
        f1.Method("plain", "plain"),
        f1.Method("block-rs", "rs", 2, 2),
        f1.Method("vgb", "v"),
    ):
        for leaf in ("exact", "head"):
            lm = DyckTreeLM(model, head)
            ver = ValueHeadVerifier(lm, tilt=dyck.completion_tilt if leaf == "exact" else None)
            whole = f1.draw_sequence(m, lm, ver, ids, p["max_tokens"], **kw)
            first = f1.draw_sequence(m, lm, ver, ids, p["max_tokens"], **kw, only_fixed=True)
            assert first["o"] == whole["o"][:4] and first["v"] == whole["v"][: len(first["v"])]
            if len(whole["o"]) > 4:
                assert first["part"] is True
                parts += 1
            lm2 = DyckTreeLM(model, head)  # a fresh process's memo
            ver2 = ValueHeadVerifier(lm2, tilt=ver._tilt)
            again = f1.draw_sequence(m, lm2, ver2, ids, p["max_tokens"], **kw, resume=first)
            assert again == whole and "part" not in again
    assert parts >= 3  # the resume path ran
    with pytest.raises(ValueError):  # an old row without its valid completions
        f1.draw_sequence(m, lm, ver, ids, p["max_tokens"], **kw, resume={"o": "1", "q": [1]})


def test_fixed_first_gives_the_rows_and_verdicts_of_a_plain_run(quick_run, tmp_path, capsys):
    from mlx_vgb.bench.cli import main

    def table(out):
        res = json.loads((out / "results.json").read_text())
        keep = ("leaf", "protocol", "count", "budget", "method", "accuracy", "distinct_correct")
        return sorted(tuple(r[k] for k in keep) for r in res["rows"]), res

    a, b = quick_run, tmp_path / "b"
    main(["dyck_fig1", "--quick", "--out", str(b), "--fixed-first"])
    assert table(a)[0] == table(b)[0]
    assert table(a)[1]["summary"]["verdicts"] == table(b)[1]["summary"]["verdicts"]

    def final_rows(out):  # the last line per key, as read_rows keeps it, without the wall time
        return {
            k: {x: v for x, v in r.items() if x != "wall_s"}
            for k, r in f1.read_rows(out / "rows.jsonl").items()
        }

    assert final_rows(a) == final_rows(b)
    lines = [json.loads(x) for x in (b / "rows.jsonl").read_text().splitlines()]
    assert any(x.get("part") for x in lines)  # the first phase wrote parts, the second whole rows
    # after the first phase only: the fixed protocol is reported on every prompt, the budget
    # protocol on none
    c = tmp_path / "c"
    c.mkdir()
    (c / "rows.meta.json").write_text((b / "rows.meta.json").read_text())
    seen, first = set(), []
    for x in lines:
        k = (x["leaf"], x["prompt_id"], x["method"])
        if k not in seen:
            seen.add(k)
            first.append(json.dumps(x))
    (c / "rows.jsonl").write_text("\n".join(first) + "\n")
    capsys.readouterr()
    main(["dyck_fig1", "--quick", "--out", str(c), "--report-only"])
    rows_c, res_c = table(c)
    assert {r[1] for r in rows_c} == {"fixed"}
    assert rows_c == [r for r in table(a)[0] if r[1] == "fixed"]
    assert set(res_c["summary"]["prompts_complete"].values()) == {0}
    fixed_a = [v for v in table(a)[1]["summary"]["verdicts"] if v["protocol"] == "fixed"]
    assert res_c["summary"]["verdicts"] == fixed_a  # bootstrap shares too: one seed per cell
    # --fixed-only stops there by itself; a run without it then finishes the sequences
    d = tmp_path / "d"
    main(["dyck_fig1", "--quick", "--out", str(d), "--fixed-only"])
    assert final_rows(d) == final_rows(c)
    assert json.loads((d / "results.json").read_text())["summary"]["verdicts"] == fixed_a
    main(["dyck_fig1", "--quick", "--out", str(d)])
    assert final_rows(d) == final_rows(a)
    with pytest.raises(SystemExit):  # nothing to stop after without the fixed protocol
        main(["dyck_fig1", "--quick", "--out", str(tmp_path / "e"), "--fixed-only",
              "--protocol", "budget"])  # fmt: skip
