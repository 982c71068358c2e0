"""Exactness on random trees: each sampler's exact output law (``mlx_vgb.laws``, computed from
its transition rule) matches its samples, and the default walks sample pi*.

Trees: ``toy.TabularLM.random`` with vocabularies 2-4, horizons 3-6, with and without early EOS
(token 0, probability 0.25). Values: the exact V*, or V* times a factor log-uniform in [1/3, 3]
at every internal node (``toy.RandomlyPerturbedValue``; tau exact at leaves).
"""

import numpy as np
import pytest
from stats_util import CHI2_ALPHA, chi_square

from mlx_vgb import VGB, ActionLevelRS, Enumerate, Rejection, laws, toy
from mlx_vgb.actions import Tokens
from mlx_vgb.children import SelfNormalized
from mlx_vgb.run import Run

TREES = [  # (vocab, horizon, eos, seed)
    (2, 3, False, 0),
    (3, 4, True, 1),
    (4, 3, True, 2),
    (2, 6, True, 3),
    (3, 5, False, 4),
    (4, 4, True, 5),
    (2, 5, True, 6),
    (3, 3, False, 7),
    (4, 5, False, 8),
    (3, 6, True, 9),
]


def tilt(y):
    return 1.0 if sum(y) % 3 else 0.2


def make(vocab, horizon, eos, seed, perturbed):
    lm = toy.TabularLM.random(
        vocab, seed=seed, eos_token_id=0 if eos else None, eos_prob=0.25 if eos else 0.0
    )
    v = (
        toy.RandomlyPerturbedValue(lm, tilt, horizon, factor=3.0, seed=seed)
        if perturbed
        else toy.ExactValue(lm, tilt, horizon)
    )
    return lm, v, laws.WalkTree(lm, v, horizon), toy.target(lm, tilt, horizon)


# -- the samplers follow their laws -------------------------------------------------------------

SAMPLED = [  # (id, sampler factory, tree, perturbed V^, samples)
    ("vgb-default", lambda H: VGB(horizon=H), (3, 4, True, 1), True, 2000),
    ("vgb-default-exact-value", lambda H: VGB(horizon=H), (4, 3, False, 2), False, 2000),
    (
        "vgb-enumerate-drift",
        lambda H: VGB(horizon=H, choice=Enumerate(), drift=0.5),
        (2, 5, True, 6),
        True,
        2000,
    ),
    (
        "vgb-self-normalized",
        lambda H: VGB(horizon=H, choice=SelfNormalized(3)),
        (3, 4, True, 1),
        True,
        2000,
    ),
    ("vgb-lazy-default", lambda H: VGB(horizon=H, lazy=True), (2, 3, True, 11), True, 500),
    ("action-rs-default", lambda H: ActionLevelRS(horizon=H), (3, 4, True, 1), True, 2000),
]


@pytest.mark.parametrize(
    "make_sampler,tree_cfg,perturbed,n", [s[1:] for s in SAMPLED], ids=[s[0] for s in SAMPLED]
)
def test_samples_match_the_exact_law_of_the_transition_rule(make_sampler, tree_cfg, perturbed, n):
    lm, v, tree, pi_star = make(*tree_cfg, perturbed=perturbed)
    sampler = make_sampler(tree_cfg[1])
    law = laws.output_law(tree, sampler)
    res = [sampler.sample(lm, v, seed=1000 + i) for i in range(n)]
    assert all(r.reached_leaf for r in res)
    assert sum(r.stats.inexact_steps for r in res) == 0  # Rejection never fell back here
    ys = [r.tokens for r in res]
    stat, dof, p = chi_square(ys, law)
    assert p > CHI2_ALPHA, (stat, dof, p)
    # the test has power: the same samples reject a law at TV >= 0.08 from the right one
    # (a wrong rule's law where it differs enough, else the uniform law on the support)
    far = laws.output_law(tree, _variant(sampler)) if sampler.name != "vgb-lazy" else {}
    if toy.tv(far, law) <= 0.08:
        far = {y: 1 / len(law) for y in law}
    assert toy.tv(far, law) > 0.08
    assert chi_square(ys, far)[2] < CHI2_ALPHA


def _variant(sampler):
    """A wrong rule to test the power against: no padding, or no parent move."""
    if isinstance(sampler, ActionLevelRS):
        return VGB(horizon=sampler.horizon, choice=Enumerate(), pad=False)
    from dataclasses import replace

    if sampler.pad and isinstance(sampler.choice, (Enumerate, Rejection)):
        return replace(sampler, pad=False)
    return ActionLevelRS(horizon=sampler.horizon, choice=sampler.choice)


@pytest.mark.parametrize(
    "choice,kernel",
    [
        (Rejection(4), lambda t: laws.exact_kernel(t, 0.7)),
        (SelfNormalized(2), lambda t: laws.self_normalized_kernel(t, 2, 0.7)),
    ],
)
def test_one_step_of_a_choice_rule_has_its_kernel_law(choice, kernel):
    lm, v, tree, _ = make(3, 3, True, 12, perturbed=True)
    up, down, _ = kernel(tree)
    node_i = tree.children[tree.children[0][1]][2]  # a depth-2 internal node
    assert not tree.leaf[node_i]
    run = Run(lm, v, (), horizon=3, actions=Tokens(), drift=0.7, seed=5)
    path = run.tree.root
    for t in tree.tokens[node_i]:
        nxt = run.tree.child(path, t)
        run._mark_walk_node(nxt, path)
        path = nxt
    run.ensure_values([path])
    parent_logw = np.log(0.7) + path.log_value
    law = {"up": up[node_i]}
    law.update({tree.tokens[c][-1]: down[c] for c in tree.children[node_i]})
    n = 6000
    got = []
    for _ in range(n):
        c = choice.choose(run, path, parent_logw)
        got.append("up" if c is path.parent else c.tokens[-1])
    stat, dof, p = chi_square(got, law)
    assert p > CHI2_ALPHA, (law, stat, p)


# -- the exact laws against pi* ----------------------------------------------------------------


def _tv_of(sampler, tree, pi_star):
    return toy.tv(laws.output_law(tree, sampler), pi_star)


@pytest.mark.parametrize(
    "cfg", TREES, ids=[f"v{c[0]}-H{c[1]}-{'eos' if c[2] else 'eq'}-s{c[3]}" for c in TREES]
)
def test_with_the_exact_value_the_default_walks_sample_pi_star(cfg):
    lm, v, tree, pi_star = make(*cfg, perturbed=False)
    H = cfg[1]
    for sampler in (
        VGB(horizon=H),
        VGB(horizon=H, choice=Enumerate()),
        VGB(horizon=H, drift=0.5),
        VGB(horizon=H, lazy=True),
        ActionLevelRS(horizon=H),
    ):
        assert _tv_of(sampler, tree, pi_star) < 0.01, sampler
    if cfg[2]:  # early EOS: the first-leaf rule without padding is biased toward short responses
        assert _tv_of(VGB(horizon=H, choice=Enumerate(), pad=False), tree, pi_star) > 0.03


def test_the_biased_rules_are_measurably_off_pi_star_with_the_exact_value():
    tvs = []
    for cfg in TREES[:6]:
        lm, v, tree, pi_star = make(*cfg, perturbed=False)
        tvs.append(_tv_of(VGB(horizon=cfg[1], choice=SelfNormalized(2)), tree, pi_star))
    assert max(tvs) > 0.02  # why SelfNormalized is not the default


@pytest.mark.parametrize(
    "cfg", TREES, ids=[f"v{c[0]}-H{c[1]}-{'eos' if c[2] else 'eq'}-s{c[3]}" for c in TREES]
)
def test_with_a_perturbed_value_the_lazy_walk_stays_near_pi_star_action_rs_does_not(cfg):
    lm, v, tree, pi_star = make(*cfg, perturbed=True)
    H = cfg[1]
    assert _tv_of(VGB(horizon=H, lazy=True), tree, pi_star) < 0.02
    assert _tv_of(VGB(horizon=H, lazy=True, drift=0.5), tree, pi_star) < 0.02
    assert _tv_of(ActionLevelRS(horizon=H), tree, pi_star) > 0.02


# -- padding: the coin equals walking the padded tree -------------------------------------------


@pytest.mark.parametrize("drift", [1.0, 0.6, 0.3])
@pytest.mark.parametrize("cfg", [(3, 4, True, 1), (2, 6, True, 3), (4, 4, True, 5)])
def test_pad_coin_equals_walking_the_padded_tree(cfg, drift):
    lm, v, tree, _ = make(*cfg, perturbed=True)
    padded = laws.WalkTree(lm, v, cfg[1], pad_leaves=True)
    assert len(padded) > len(tree) and all(
        padded.depth[i] == cfg[1] for i in range(len(padded)) if padded.leaf[i]
    )
    coin = laws.practical_law(tree, laws.exact_kernel(tree, drift), drift, pad=True)
    walked = laws.practical_law(padded, laws.exact_kernel(padded, drift), drift, pad=False)
    assert toy.tv(coin, walked) < 1e-12
    lazy, p = laws.lazy_law(tree, laws.exact_kernel(tree, drift), 40, drift, pad=True)
    lazy_walked, p2 = laws.lazy_law(padded, laws.exact_kernel(padded, drift), 40, drift, pad=False)
    assert toy.tv(lazy, lazy_walked) < 1e-12 and abs(p - p2) < 1e-12


def test_exactness_benchmark_writes_the_before_after_table(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mlx_vgb.bench import exactness

    monkeypatch.setattr(exactness, "SHAPES", [(2, 3)])
    args = SimpleNamespace(
        quick=True,
        seed=0,
        samples=10,
        cost_trees=1,
        out=tmp_path,
        command="mlx-vgb bench exactness --quick",
    )
    exactness.run(args)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# `exactness` benchmark\n\nCommand: `mlx-vgb bench exactness --quick`")
    tv = __import__("json").loads((tmp_path / "results.json").read_text())["summary"]["tv"]
    before = tv["vgb, SelfNormalized(8), no padding | early EOS | exact"]["mean_tv"]
    after = tv["vgb (default: Rejection(8), padded) | early EOS | exact"]["mean_tv"]
    assert before > 0.1 and after < 1e-9
