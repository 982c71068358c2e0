"""Verifier training: resumable rollouts, value targets, metrics, deterministic training, and
the `mlx-vgb train-verifier` pipeline end to end on a tiny random model."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_vgb.errors import ConfigError
from mlx_vgb.rollouts import (
    PromptRecord,
    Rollout,
    collect_rollouts,
    load_prompts,
    read_rollouts,
)
from mlx_vgb.tasks import dyck
from mlx_vgb.tasks.train_dyck_lm import model_args, save_lm, train_lm
from mlx_vgb.value_training import (
    evaluate,
    split_by_prompt,
    train_head,
    value_targets,
    weighted_auc,
    within_prompt_auc,
)


@pytest.fixture(scope="module")
def tiny_lm():
    from mlx_lm.models import llama

    mx.random.seed(0)
    m = llama.Model(model_args(hidden=16, layers=1, heads=2, intermediate=32))
    mx.eval(m.parameters())
    return m


PROMPTS = [
    PromptRecord(f"p{i}", p["prompt"], p["max_tokens"])
    for i, p in enumerate(dyck.make_prompts(6, seed=3, prompt_lengths=(20, 22)))
]


def encode(text):
    return [dyck.BOS] + dyck.encode(text)


class CountingReward:
    def __init__(self):
        self.calls = []

    def __call__(self, prompt, completion):
        self.calls.append((prompt, completion))
        return dyck.reward(prompt, completion)


def collect(model, path, reward=None, **kw):
    kw.setdefault("n", 4)
    kw.setdefault("batch_size", 4)
    return collect_rollouts(
        model,
        PROMPTS,
        path,
        encode=encode,
        decode=dyck.decode,
        reward=reward or dyck.reward,
        eos_token_ids=[dyck.EOS],
        seed=7,
        progress=False,
        **kw,
    )


class Stop(Exception):
    pass


def test_interrupted_rollouts_resume_without_recomputing(tiny_lm, tmp_path):
    full = collect(tiny_lm, tmp_path / "full.jsonl")
    assert full.total == full.computed == 24

    part = tmp_path / "part.jsonl"

    def interrupt(n_done):
        if n_done >= 8:
            raise Stop

    with pytest.raises(Stop):
        collect(tiny_lm, part, on_batch=interrupt)
    first = read_rollouts(part)
    assert len(first) == 8
    reward = CountingReward()
    run = collect(tiny_lm, part, reward=reward)
    assert (run.skipped, run.computed, run.total) == (8, 16, 24)
    assert len(reward.calls) == 16  # only the missing rollouts were scored (and sampled)
    # the finished rollouts were kept as they were
    assert read_rollouts(part)[:8] == first
    # the finished file is the uninterrupted one, line for line
    assert part.read_text() == (tmp_path / "full.jsonl").read_text()
    # a third run computes nothing
    again = collect(tiny_lm, part, reward=CountingReward())
    assert again.computed == 0 and again.skipped == 24


def test_a_line_cut_off_by_a_kill_is_redone(tiny_lm, tmp_path):
    path = tmp_path / "r.jsonl"
    collect(tiny_lm, path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:10]) + lines[10][:25])  # killed mid-write
    run = collect(tiny_lm, path)
    assert run.skipped == 10 and run.computed == 14
    assert sorted(path.read_text().splitlines()) == sorted(text.splitlines())


def test_resuming_with_other_settings_is_refused(tiny_lm, tmp_path):
    path = tmp_path / "r.jsonl"
    collect(tiny_lm, path, n=2)
    with pytest.raises(ConfigError, match="other settings"):
        collect(tiny_lm, path, n=3)


def test_rollouts_do_not_depend_on_batch_size(tiny_lm, tmp_path):
    collect(tiny_lm, tmp_path / "a.jsonl", batch_size=1)
    collect(tiny_lm, tmp_path / "b.jsonl", batch_size=64)

    def key(r):
        return r.prompt_id, r.index

    a = sorted(read_rollouts(tmp_path / "a.jsonl"), key=key)
    b = sorted(read_rollouts(tmp_path / "b.jsonl"), key=key)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]


def roll(pid, k, prompt, completion, reward):
    return Rollout(pid, k, list(prompt), list(completion), "", reward, "stop")


def test_value_targets_pool_outcomes_over_shared_prefixes():
    rs = [
        roll("a", 0, [9], [1, 2, 5], 1.0),
        roll("a", 1, [9], [1, 3, 5], 0.0),
        roll("b", 0, [8], [1, 5], 1.0),
    ]
    t = value_targets(rs, include_leaves=False)
    got = {p: (s, c) for p, s, c in zip(t.prefixes, t.successes, t.counts)}
    assert got == {
        (9,): (1, 2),
        (9, 1): (1, 2),
        (9, 1, 2): (1, 1),
        (9, 1, 3): (0, 1),
        (8,): (1, 1),
        (8, 1): (1, 1),
    }
    # the hidden state of a prefix is read at its last token
    i = t.prefixes.index((9, 1, 3))
    assert tuple(t.source[i]) == (1, 2)
    t2 = value_targets(rs, block=2, include_leaves=False)
    assert set(t2.prefixes) == {(9,), (9, 1, 2), (9, 1, 3), (8,)}
    t3 = value_targets(rs)  # leaves too, with their own outcome
    leaves = {p: s for p, s in zip(t3.prefixes, t3.successes) if len(p) == 4 or p == (8, 1, 5)}
    assert leaves == {(9, 1, 2, 5): 1.0, (9, 1, 3, 5): 0.0, (8, 1, 5): 1.0}
    with pytest.raises(ConfigError):
        value_targets([roll("a", 0, [1], [2], 3.0)])


def test_weighted_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=30).astype(float)  # ties on purpose
    pos = rng.integers(0, 3, size=30).astype(float)
    neg = rng.integers(0, 3, size=30).astype(float)
    num = sum(
        pos[i] * neg[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
        for i in range(30)
        for j in range(30)
    )
    assert weighted_auc(s, pos, neg) == pytest.approx(num / (pos.sum() * neg.sum()))


def test_within_prompt_auc_counts_only_pairs_of_one_prompt():
    # prompt a: its success (weight 2) scores above its failure: AUC 1 over 2 pairs; prompt b:
    # its success below its failure: AUC 0 over 1 pair; prompt c has one class only
    s = np.array([0.9, 0.8, 0.95, 0.1, 0.5])
    pos = np.array([2.0, 0.0, 0.0, 1.0, 1.0])
    neg = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    pids = ["a", "a", "b", "b", "c"]
    assert within_prompt_auc(s, pos, neg, pids) == pytest.approx((2 * 1 + 1 * 0) / 3)
    # pooled, all 4 x 2 pairs count: only a's success over a's failure is ordered right
    assert weighted_auc(s, pos, neg) == pytest.approx(2 / 8)
    assert np.isnan(within_prompt_auc(s, pos, neg, ["a", "b", "c", "d", "e"]))


def test_metrics_and_calibration():
    rs = [roll("a", k, [1], [2], float(k % 2)) for k in range(4)]
    t = value_targets(rs, include_leaves=False)
    m = evaluate(np.array([0.5]), t)
    assert m.brier == pytest.approx(0.25) and m.mse_mc == pytest.approx(0.0)
    assert m.auc == pytest.approx(0.5) and m.base_rate == 0.5
    assert len(m.calibration) == 1 and m.calibration[0].mean_outcome == 0.5
    assert m.calibration[0].lo == pytest.approx(0.5)


def synthetic_targets(n=400, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    p = 1 / (1 + np.exp(-3 * x[:, 0]))
    rs = [roll(f"q{i % 40}", i, [i], [], 0.0) for i in range(n)]
    from mlx_vgb.value_training import ValueTargets

    succ = (rng.random(n) < p).astype(float)
    t = ValueTargets(
        [(i,) for i in range(n)], succ, np.ones(n), np.zeros((n, 2), int), [r.prompt_id for r in rs]
    )
    return x, t


def test_head_training_is_deterministic_and_learns():
    x, t = synthetic_targets()
    tr, ho = split_by_prompt(t, 0.25, seed=0)
    assert len({t.prompt_ids[i] for i in ho}) == 10
    assert not {t.prompt_ids[i] for i in tr} & {t.prompt_ids[i] for i in ho}
    a = train_head(x, t, train_idx=tr, held_idx=ho, epochs=15, seed=3, log=None)
    b = train_head(x, t, train_idx=tr, held_idx=ho, epochs=15, seed=3, log=None)
    wa, wb = dict(tree_flatten(a.head.parameters())), dict(tree_flatten(b.head.parameters()))
    assert all(np.array_equal(np.array(wa[k]), np.array(wb[k])) for k in wa)
    assert a.losses == b.losses
    assert a.held_out.auc > 0.8
    c = train_head(x, t, train_idx=tr, held_idx=ho, epochs=15, seed=4, log=None)
    assert not np.array_equal(np.array(c.head.layers[0].weight), np.array(wa["layers.0.weight"]))


def test_head_learns_through_a_few_huge_feature_dimensions():
    """Real hidden states (Qwen2.5's final normed state) carry a few dimensions hundreds of
    times larger than the rest, with large means: the head standardizes its inputs, so the
    signal in a small dimension is still learned, and the saved head reads raw features."""
    x, t = synthetic_targets(n=800, d=16, seed=1)
    x = x * 0.05  # the informative dimension 0 is small...
    x[:, 1:4] = x[:, 1:4] * 800.0 + 3000.0  # ...next to huge, offset ones
    tr, ho = split_by_prompt(t, 0.25, seed=0)
    r = train_head(x, t, train_idx=tr, held_idx=ho, epochs=15, seed=0, log=None)
    assert r.held_out.auc > 0.8
    assert r.losses[-1] < r.losses[0] - 0.05  # it learned more than the base rate


def test_folded_scale_gives_the_same_values_on_raw_features():
    from mlx_vgb.value_training import feature_scale, fold_scale
    from mlx_vgb.verifier_format import HeadConfig, ValueHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)) * np.array([1, 2, 500, 0.01, 3, 1]) + np.array(
        [0, 9, 1e3, 0, 0, 5]
    )
    x[:, 5] = 5.0  # a constant dimension keeps scale 1
    mu, sd = feature_scale(x)
    assert sd[5] == 1.0 and np.allclose(mu[5], 5.0)
    mx.random.seed(0)
    h = ValueHead(HeadConfig(dims=[6, 8, 1], activation="relu", output="sigmoid"))
    mx.eval(h.parameters())
    before = np.array(h(mx.array(((x - mu) / sd).astype(np.float32))))
    fold_scale(h, mu, sd)
    after = np.array(h(mx.array(x.astype(np.float32))))
    np.testing.assert_allclose(after, before, atol=2e-5)


def test_cross_validation_predicts_unseen_prompts_only():
    """Out-of-fold metrics find the signal the synthetic features carry, and find none (AUC
    near 1/2) once the outcomes are shuffled: each fold's head never saw its prompts."""
    from mlx_vgb.value_training import ValueTargets, cross_validate

    x, t = synthetic_targets(n=800, d=8, seed=2)
    m = cross_validate(x, t, folds=4, seed=0, epochs=10)
    assert m.n_prefixes == 800 and m.auc > 0.8
    rng = np.random.default_rng(5)
    shuffled = ValueTargets(
        t.prefixes, rng.permutation(t.successes), t.counts, t.source, t.prompt_ids
    )
    # 800 outcomes: the AUC of an uninformative score has sd ~0.02; 0.1 is five of them
    assert abs(cross_validate(x, shuffled, folds=4, seed=0, epochs=10).auc - 0.5) < 0.1
    with pytest.raises(ConfigError, match="folds"):
        cross_validate(x, t, folds=1)


def test_lm_training_is_deterministic_under_a_seed():
    args = model_args(hidden=16, layers=1, heads=2, intermediate=32)
    a, la = train_lm(args, steps=3, batch=8, seed=1, log=None)
    b, lb = train_lm(args, steps=3, batch=8, seed=1, log=None)
    assert la == lb
    wa, wb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert all(np.array_equal(np.array(wa[k]), np.array(wb[k])) for k in wa)


def test_train_verifier_cli_end_to_end(tiny_lm, tmp_path, monkeypatch):
    from mlx_vgb import value_training
    from mlx_vgb.train_verifier import main
    from mlx_vgb.verifier_format import load_verifier

    lm_dir = save_lm(tiny_lm, tmp_path / "lm")
    prompts = tmp_path / "prompts.jsonl"
    dyck.write_prompts(prompts, dyck.make_prompts(10, seed=1, prompt_lengths=(24, 26)))
    assert len(load_prompts(prompts)) == 10
    out = tmp_path / "verifier"
    argv = [
        "--model",
        str(lm_dir),
        "--prompts",
        str(prompts),
        "--reward",
        "dyck",
        "--out",
        str(out),
        "--num-rollouts",
        "3",
        "--epochs",
        "2",
        "--no-progress",
    ]
    main(argv)
    cfg, _head, backbone = load_verifier(out)
    assert cfg.head.dims == [16, 128, 1] and backbone is None
    metrics = json.loads((tmp_path / "verifier.work" / "metrics.json").read_text())
    assert metrics["rollouts"] == 30 and metrics["held_out"]["n_prefixes"] > 0
    with pytest.raises(SystemExit):
        main(argv)  # out exists, no --force
    # the features are kept: a second head on the same rollouts does no forward
    (feats,) = (tmp_path / "verifier.work").glob("features-*.npy")

    def no_forwards(*a, **k):
        raise AssertionError("the kept features should be read, not recomputed")

    monkeypatch.setattr(value_training, "target_features", no_forwards)
    main(argv + ["--force", "--hidden-dims", "8", "--cv", "3"])
    assert load_verifier(out)[0].head.dims == [16, 8, 1]
    again = json.loads((tmp_path / "verifier.work" / "metrics.json").read_text())
    assert again["cv"]["folds"] == 3 and 0 < again["cv"]["n_prefixes"] < again["prefixes"]
    assert again["prefixes"] == metrics["prefixes"]
    monkeypatch.undo()
    # a user reward given as module:function
    (tmp_path / "myreward.py").write_text("def score(prompt, completion):\n    return 1.0\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        main(
            argv[:5]
            + [
                "myreward:score",
                "--out",
                str(tmp_path / "v2"),
                "--work-dir",
                str(tmp_path / "w2"),
                "--num-rollouts",
                "2",
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
    finally:
        sys.path.remove(str(tmp_path))
    m2 = json.loads((tmp_path / "w2" / "metrics.json").read_text())
    assert m2["success_rate"] == 1.0


def test_a_batch_with_shared_prompts_and_early_stops_draws_what_rows_draw_alone(tiny_lm):
    # prompts repeated (prefilled once, rows share the cache) and rows stopping at different
    # steps (dropped from the batch as they stop): each row's tokens are those it draws alone
    from mlx_vgb.rollouts import sample_batch

    prompts = [encode(PROMPTS[0].prompt)] * 5 + [encode(PROMPTS[1].prompt)] * 3
    assert len({len(p) for p in prompts}) == 1
    u = np.random.default_rng(4).random((len(prompts), 40))
    eos = frozenset([dyck.EOS])
    batched = sample_batch(tiny_lm, prompts, u, 40, eos)
    alone = [sample_batch(tiny_lm, [p], u[i : i + 1], 40, eos)[0] for i, p in enumerate(prompts)]
    assert batched == alone
    assert len({len(r) for r in batched}) > 2  # rows stopped at several different steps


def test_two_mlx_launch_ranks_train_what_one_rank_trains(tiny_lm, tmp_path):
    # rollouts sharded by prompt across 2 ranks (mlx.launch, ring backend, this machine): each
    # rank writes its own file, rank 0 trains on all of them: the same rollouts and metrics
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    lm_dir = save_lm(tiny_lm, tmp_path / "lm")
    prompts = tmp_path / "prompts.jsonl"
    dyck.write_prompts(prompts, dyck.make_prompts(6, seed=1, prompt_lengths=(24, 26)))

    def argv(name):
        return [
            "-m", "mlx_vgb.cli", "train-verifier", "--model", str(lm_dir), "--prompts",
            str(prompts), "--reward", "dyck", "--out", str(tmp_path / name), "--num-rollouts",
            "3", "--epochs", "2", "--no-progress",
        ]  # fmt: skip

    r = subprocess.run([sys.executable, *argv("one")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    launch = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))
    r = subprocess.run(
        [launch, "-n", "2", "--backend", "ring", sys.executable, *argv("two")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    two = tmp_path / "two.work"
    assert sorted(p.name for p in two.glob("rollouts*.jsonl")) == [
        "rollouts.rank0.jsonl",
        "rollouts.rank1.jsonl",
    ]

    def rolls(paths):
        return sorted(
            (r.prompt_id, r.index, tuple(r.completion_ids)) for p in paths for r in read_rollouts(p)
        )

    assert rolls(two.glob("rollouts.rank*.jsonl")) == rolls(
        [tmp_path / "one.work" / "rollouts.jsonl"]
    )
    m1 = json.loads((tmp_path / "one.work" / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["rollouts"] == m2["rollouts"] == 18
    # the same rollouts in the same order, the same seed: the same training, to the bit
    assert m2["train"] == m1["train"] and m2["final_loss"] == m1["final_loss"]
    assert m1["train"]["n_prefixes"] > 0


def test_prompts_of_other_lengths_share_a_left_padded_batch(tiny_lm):
    from mlx_vgb.rollouts import sample_batch

    ps = [encode(p.prompt) for p in PROMPTS]
    ps = [ps[0], ps[0], ps[0][:-3], ps[1], ps[1][:-7], ps[1][:-7]]
    assert len({len(p) for p in ps}) >= 3
    u = np.random.default_rng(5).random((len(ps), 40))
    eos = frozenset([dyck.EOS])
    batched = sample_batch(tiny_lm, ps, u, 40, eos)
    alone = [sample_batch(tiny_lm, [p], u[i : i + 1], 40, eos)[0] for i, p in enumerate(ps)]
    assert batched == alone and len({len(r) for r in batched}) > 2


def test_features_with_a_shared_prompt_forward_match_whole_sequences(tiny_lm):
    # the rollouts of a prompt share its forward (KV cache copies), the others run whole: the
    # same hidden states up to float rounding, at every target position
    from mlx_vgb.value_training import hidden_states, target_features

    rs = []
    for pi, p in enumerate(PROMPTS[:2]):
        ids = encode(p.prompt)
        # lengths 3, 6, 0, 1 and 14: two batches by length (_length_batches), one empty row
        comps = [[3, 4, dyck.EOS], [5, 3, 3, 4, 4, 6], [], [4], [3, 4] * 7]
        for k, comp in enumerate(comps):
            rs.append(Rollout(p.id, k, ids, comp, "", float(k == 0), "stop"))
    t = value_targets(rs)
    got = target_features(tiny_lm, rs, t)
    seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in rs]
    full = hidden_states(tiny_lm, seqs)
    want = np.stack([full[j][p] for j, p in t.source])
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_length_batches_bound_the_padding():
    from mlx_vgb.value_training import _length_batches

    lengths = [3, 6, 0, 1, 14, 5, 5, 100]
    got = _length_batches([0, 1, 3, 4, 5, 6, 7], lengths, batch_size=3)
    assert sorted(i for b in got for i in b) == [0, 1, 3, 4, 5, 6, 7]
    for b in got:
        assert len(b) <= 3
        # padded tokens within 1.5x the real ones, unless the batch is a single row
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1.5 * sum(
            lengths[i] for i in b
        )
    assert [7] in got and [4] in got  # the long ones alone
    assert _length_batches([], lengths, 4) == []


def test_features_resume_prompt_by_prompt(tmp_path):
    """A run killed while computing features keeps the prompts it finished; the rerun computes
    only the rest and assembles the same array, in target order."""
    from mlx_vgb.train_verifier import _chunked_features, _chunks_dir, _drop_chunks
    from mlx_vgb.value_training import ValueTargets

    pids = ["a", "b", "a", "c", "b", "c", "c"]
    n = len(pids)
    t = ValueTargets([(i,) for i in range(n)], np.zeros(n), np.ones(n), np.zeros((n, 2), int), pids)
    seen = []

    def compute(sub, fail_on=None):
        if sub.prompt_ids[0] == fail_on:
            raise KeyboardInterrupt
        seen.append(sub.prompt_ids[0])
        return np.array([[p[0], 2.0 * p[0]] for p in sub.prefixes], dtype=np.float32)

    cache = tmp_path / "features-x.npy"
    with pytest.raises(KeyboardInterrupt):
        _chunked_features(cache, lambda s: compute(s, fail_on="c"), t)
    assert seen == ["a", "b"] and len(list(_chunks_dir(cache).glob("*.npy"))) == 2
    seen.clear()
    f = _chunked_features(cache, compute, t)
    assert seen == ["c"]
    np.testing.assert_array_equal(f[:, 0], np.arange(n))
    np.testing.assert_array_equal(f[:, 1], 2 * np.arange(n))
    _drop_chunks(cache)
    assert not _chunks_dir(cache).exists()
