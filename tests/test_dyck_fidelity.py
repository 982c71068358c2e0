"""bench dyck_fidelity: the distances and summaries, the noise floor, and the quick mode end to
end (a report per head and method, resume)."""

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from mlx_vgb.bench import dyck_fidelity as fid
from mlx_vgb.errors import ConfigError
from mlx_vgb.tasks import dyck


def sample(p, n, seed):
    rng = np.random.default_rng(seed)
    return Counter(rng.choice(len(p), size=n, p=p).tolist())


def test_tv_of_two_halves_of_one_sample_is_small_and_of_two_laws_is_their_tv():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    # E TV(two samples of n) <= 1/2 sum_i sqrt(2 p_i (1 - p_i) / n) = 0.014 for n = 5000; the
    # threshold is twice that (seeded, so not flaky)
    a, b = sample(p, 5000, 1), sample(p, 5000, 2)
    assert fid.tv(a, b) < 0.03
    assert abs(fid.tv(sample(p, 5000, 3), sample(q, 5000, 4)) - 0.4) < 0.03  # TV(p, q) = 0.4
    assert fid.tv(Counter("aab"), Counter("aab")) == 0.0
    assert fid.tv(Counter("a"), Counter("b")) == 1.0
    assert np.isnan(fid.tv(Counter(), Counter("a")))


def test_summaries():
    c = "(()[])"
    assert fid.summary(c, "whole") == c
    assert fid.summary(c, "first3") == "(()"
    assert fid.summary(c, "opens") == 2
    assert fid.summary(c, "depth") == "++-+--"
    r = fid.reduce(Counter({"(]": 2, "([": 1, "[]": 3}), "first3")
    assert r == Counter({"(]": 2, "([": 1, "[]": 3})
    assert fid.reduce(Counter({"((": 2, "([": 1}), "opens") == Counter({2: 2, 1: 1})


def test_distances_of_pi_star_itself_sit_at_the_floor():
    rng = np.random.default_rng(0)
    pi = [("(" if x else "[") + ")]"[y] for x, y in rng.integers(0, 2, (4000, 2))]
    same = Counter(pi[:1000])
    d = fid.distances(same, pi, np.random.default_rng(1))
    for k in fid.SUMMARIES:
        assert d[k]["tv"] < 0.05 and d[k]["floor_half"] < 0.05 and d[k]["floor_matched"] < 0.06
    other = Counter({"((": 1000})
    assert fid.distances(other, pi, np.random.default_rng(1))["whole"]["tv"] > 0.7


@pytest.mark.parametrize(
    "kw", [{"hard": 5, "prompts": 3}, {"epochs": "1,x"}, {"samples": -1}, {"epochs": "0"}]
)
def test_bad_settings_are_config_errors(kw):
    a = dict(lm="x", verifier="y", seed=0, leaf="exact", quick=True, prompts=None, hard=None)
    a |= dict(pool=None, screen=None, pi_samples=None, samples=None, epochs=None)
    a |= dict(train_prompts=None, train_rollouts=None)
    with pytest.raises(ConfigError):
        fid._settings(SimpleNamespace(**(a | kw)))


def test_quick_mode_reports_every_head_and_method_and_resumes(tmp_path, capsys, monkeypatch):
    from mlx_vgb.bench.cli import main

    out = tmp_path / "fid"
    main(["dyck_fidelity", "--quick", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    table = res["summary"]["table"]
    assert {(r["head"], r["method"]) for r in table if r["prompts"] == "all"} == {
        (h, m) for h in ("epochs=2", "shipped") for m in fid.METHODS
    }
    for r in table:
        for k in fid.SUMMARIES:
            assert 0 <= r[f"tv_{k}"] <= 1 + 1e-9 and 0 <= r[f"floor_{k}"] <= 1 + 1e-9
    # exact leaves: every sample is valid, so the distances are over the valid completions
    assert all(r["valid_samples"] == 20 for r in res["rows"])
    assert {r["hard"] for r in res["rows"]} == {True, False}
    # closer / tied / farther per head and summary, recomputed from the per-prompt rows
    n = res["summary"]["prompts_reported"]
    for key, c in res["summary"]["vgb_closer_tied_farther"].items():
        h, k = key.split(" ")
        tv = {(r["prompt_id"], r["method"]): r[f"{k}_tv"] for r in res["rows"] if r["head"] == h}
        ids = {p for p, _ in tv}
        pairs = [(tv[p, "vgb"], tv[p, "action-rs"]) for p in ids]
        assert c == {
            "closer": sum(a < b for a, b in pairs),
            "tied": sum(a == b for a, b in pairs),
            "farther": sum(a > b for a, b in pairs),
        }
        assert sum(c.values()) == n and res["summary"]["vgb_closer_share"][key] == c["closer"] / n
    capsys.readouterr()
    before = (out / "rows.jsonl").read_bytes()
    main(["dyck_fidelity", "--quick", "--out", str(out)])
    assert "0 (prompt, head, method) to sample" in capsys.readouterr().out
    assert (out / "rows.jsonl").read_bytes() == before
    # a partial report: drop one prompt's last row; --report-only reports over the other one,
    # with the heads' AUCs kept in heads.json (no head trained again)
    aucs = {r["head"]: r["held_out_auc"] for r in table}
    assert aucs["epochs=2"] is not None and 0 <= aucs["epochs=2"] <= 1
    lines = before.decode().splitlines()
    (out / "rows.jsonl").write_text("\n".join(lines[:-1]) + "\n")

    def no_training(*a, **k):
        raise AssertionError("--report-only trained the heads again")

    with monkeypatch.context() as m:
        m.setattr(fid, "train_heads", no_training)
        main(["dyck_fidelity", "--quick", "--out", str(out), "--report-only"])
    part = json.loads((out / "results.json").read_text())
    assert {r["head"]: r["held_out_auc"] for r in part["summary"]["table"]} == aucs
    assert part["summary"]["unfinished"] is True and part["summary"]["prompts_reported"] == 1
    assert len({r["prompt_id"] for r in part["rows"]}) == 1
    assert "UNFINISHED" in (out / "results.md").read_text()
    assert len((out / "rows.jsonl").read_text().splitlines()) == len(lines) - 1  # nothing drawn
    # heads.json from other settings is not used: the heads are trained again (and kept)
    kept = json.loads((out / "heads.json").read_text())
    kept["key"]["train_rollouts"] += 1
    (out / "heads.json").write_text(json.dumps(kept))
    trained, real = [], fid.train_heads
    (out / "rows.jsonl").write_text("")
    with monkeypatch.context() as m:
        m.setattr(fid, "train_heads", lambda *a, **k: trained.append(1) or real(*a, **k))
        with pytest.raises(SystemExit):
            main(["dyck_fidelity", "--quick", "--out", str(out), "--report-only"])
    assert trained == [1]
    assert json.loads((out / "heads.json").read_text())["key"] != kept["key"]


def test_the_prescreen_screens_in_full_only_the_prompts_below_its_bar_and_rates_are_kept(
    tmp_path,
):
    from mlx_lm import load

    from mlx_vgb.bench.dyck import DEFAULT_LM

    model, _ = load(str(DEFAULT_LM))
    pool = dyck.make_prompts(8, 5, dyck.OOD_TYPE_PROBS, prompt_lengths=fid.PROMPT_LENGTHS)
    st = dict(lm="x", seed=0, pool=8, screen=60)
    full = fid.screen_rates(model, pool, st)
    pre = fid.screen_rates(model, pool, st | {"prescreen": 20})
    for p in pool:
        first = fid.plain_samples(model, p, 20, seed=1)  # the first 20 draws of the screen
        r0 = sum(x is not None for x in first) / 20
        assert pre[p["id"]] == (r0 if r0 >= fid.PRESCREEN_EASY else full[p["id"]])
    assert any(v >= fid.PRESCREEN_EASY for v in pre.values())  # some were cut short
    assert any(v < fid.PRESCREEN_EASY for v in pre.values())  # some got the full screen
    # kept with their settings: reused when they match (a marked copy shows it), else redone
    cache = tmp_path / "screen.json"
    fid.screen_rates(model, pool, st, cache)
    kept = json.loads(cache.read_text())
    kept["rates"] = {k: 0.5 for k in kept["rates"]}
    cache.write_text(json.dumps(kept))
    assert set(fid.screen_rates(model, pool, st, cache).values()) == {0.5}
    assert fid.screen_rates(model, pool, st | {"screen": 61}, cache) != {k: 0.5 for k in full}
    # a screen stopped part-way resumes: the prompts it had are kept, the rest are screened
    kept = {"key": json.loads(cache.read_text())["key"], "done": False}
    kept["rates"] = {pool[0]["id"]: 0.25}
    cache.write_text(json.dumps(kept))
    got = fid.screen_rates(model, pool, st | {"screen": 61}, cache)
    assert got[pool[0]["id"]] == 0.25 and len(got) == len(pool)
    assert json.loads(cache.read_text())["done"] is True


def test_the_pi_star_sample_is_kept_and_resumed(tmp_path):
    from mlx_lm import load

    from mlx_vgb.bench.dyck import DEFAULT_LM

    model, _ = load(str(DEFAULT_LM))
    prompts = dyck.make_prompts(3, 9, dyck.OOD_TYPE_PROBS, prompt_lengths=fid.PROMPT_LENGTHS)
    st = dict(lm="x", pi_samples=40)
    want = fid.pi_star(model, prompts, st)
    assert set(want) == {p["id"] for p in prompts} and any(want.values())
    for p in prompts:  # the valid ones of the plain samples at the pi* seed
        s = fid.plain_samples(model, p, 40, seed=fid.PI_SEED)
        assert want[p["id"]] == [c for c in s if c is not None]
    cache = tmp_path / "pi.json"
    assert fid.pi_star(model, prompts, st, cache) == want
    kept = json.loads(cache.read_text())
    kept["pi"][prompts[0]["id"]]["samples"] = ["marked"]
    del kept["pi"][prompts[1]["id"]]  # as if stopped before this prompt
    cache.write_text(json.dumps(kept))
    got = fid.pi_star(model, prompts, st, cache, keep=False)  # read back, the missing one drawn
    assert got[prompts[0]["id"]] == ["marked"] and got[prompts[1]["id"]] == want[prompts[1]["id"]]
    assert prompts[1]["id"] not in json.loads(cache.read_text())["pi"]  # keep=False: not written
    assert fid.pi_star(model, prompts[:1], st, cache) == {prompts[0]["id"]: ["marked"]}  # a subset
    other = [dict(prompts[0], prompt=prompts[0]["prompt"] + "()")]  # another prompt, same id
    assert fid.pi_star(model, other, st, cache)[other[0]["id"]] != ["marked"]
    kept = json.loads(cache.read_text())
    kept["pi"][prompts[2]["id"]]["samples"] = ["marked"]
    cache.write_text(json.dumps(kept))
    assert fid.pi_star(model, prompts[2:], st, cache)[prompts[2]["id"]] == ["marked"]
    again = fid.pi_star(model, prompts[2:], st | {"pi_samples": 41}, cache)
    assert again[prompts[2]["id"]] != ["marked"]  # other settings: sampled again
