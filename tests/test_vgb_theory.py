"""The sampler against the paper's theory on toy trees small enough to enumerate."""

import numpy as np
import pytest
from stats_util import pushforward, tv_threshold

from mlx_vgb import (
    VGB,
    ActionLevelRS,
    Enumerate,
    Rejection,
    Walk,
    laws,
    toy,
)
from mlx_vgb.actions import Tokens
from mlx_vgb.children import SelfNormalized
from mlx_vgb.run import Run


def parity_tilt(y):
    # strong tilt: pi* is far from pi_ref, so a sampler that ignores the verifier fails the test
    return 1.0 if y.count(0) % 2 == 0 else 0.05


def sample_law(sampler, lm, verifier, n, seed0=0):
    res = [sampler.sample(lm, verifier, seed=seed0 + i) for i in range(n)]
    assert all(r.reached_leaf for r in res)
    return toy.empirical([r.tokens for r in res]), res


@pytest.mark.parametrize(
    "sampler",
    [
        VGB(horizon=3, choice=Enumerate()),
        VGB(horizon=3, choice=Rejection()),
        ActionLevelRS(horizon=3, choice=Enumerate()),
    ],
    ids=["vgb-enumerate", "vgb-rejection", "action-rs"],
)
def test_exact_value_gives_target_law(sampler):
    lm = toy.TabularLM.random(3, seed=1)
    v = toy.ExactValue(lm, parity_tilt, 3)
    pi_star = toy.target(lm, parity_tilt, 3)
    n = 3000
    thr = tv_threshold(len(pi_star), n)  # 27 outcomes: ~0.087
    assert toy.tv(toy.leaves(lm, 3), pi_star) > 2 * thr  # the test can fail
    emp, _ = sample_law(sampler, lm, v, n)
    assert toy.tv(emp, pi_star) < thr


def test_lazy_theory_variant_gives_target_law():
    lm = toy.TabularLM.random(2, seed=3)
    v = toy.ExactValue(lm, parity_tilt, 3)
    pi_star = toy.target(lm, parity_tilt, 3)
    n = 2000
    # T = 48 lazy steps on a depth-3 tree: the law of X_T is within ~1e-3 of stationary
    # (second eigenvalue of the 15-node lazy chain < 0.87), far below the sampling threshold.
    thr = tv_threshold(len(pi_star), n) + 0.005
    assert toy.tv(toy.leaves(lm, 3), pi_star) > 2 * thr
    emp, res = sample_law(
        VGB(horizon=3, lazy=True, steps_per_try=48, max_tries=200, choice=Enumerate()), lm, v, n
    )
    assert toy.tv(emp, pi_star) < thr
    assert np.mean([r.stats.restarts for r in res]) > 1  # it really restarts


def count_a(y):
    return y.count(0)


def test_error_amplification_action_rs_degrades_with_horizon_vgb_does_not():
    # Example 3.1: pi_ref uniform on {A, B, C}, tau = 1, so pi* = pi_ref; V^ = 2 V* after an A.
    # ActionLevelRS picks A with prob 2/4 instead of 1/3 at every internal step: the law of
    # "number of A's" drifts by eps * sqrt(H). VGB's leaf law stays pi*.
    lm = toy.TabularLM.uniform(3)
    dist = {}
    for H in (2, 8):
        v = toy.PerturbedValue(lm, lambda y: 1.0, H, eps=1.0, action=0)
        target = pushforward(toy.leaves(lm, H), count_a)
        n = 1500
        thr = tv_threshold(H + 1, n)
        emp_rs, _ = sample_law(ActionLevelRS(horizon=H, choice=Enumerate()), lm, v, n)
        emp_vgb, _ = sample_law(VGB(horizon=H, choice=Enumerate()), lm, v, n)
        dist[H] = (
            toy.tv(pushforward(emp_rs, count_a), target),
            toy.tv(pushforward(emp_vgb, count_a), target),
            thr,
        )
    rs2, vgb2, _ = dist[2]
    rs8, vgb8, thr8 = dist[8]
    assert rs8 > rs2 + 0.1  # ActionLevelRS's error grows with H
    assert rs8 > 0.25
    assert vgb8 < thr8  # VGB stays within sampling noise of pi* (thr ~ 0.11)
    assert vgb8 < rs8 / 3


def test_delayed_value_action_rs_follows_pi_ref_vgb_follows_target():
    # Example 3.2: V^(y_1..h) = V*(y_1..h-1). tau rewards a rare first token (pi_ref(0) = 0.2).
    lm = toy.TabularLM(3, lambda p: [0.2, 0.4, 0.4])
    tilt = lambda y: 1.0 if y[0] == 0 else 0.05  # noqa: E731
    H = 4
    v = toy.DelayedValue(lm, tilt, H)
    first = lambda y: y[0]  # noqa: E731
    p_ref = pushforward(toy.leaves(lm, H), first)[0]  # 0.2
    p_star = pushforward(toy.target(lm, tilt, H), first)[0]  # 0.833
    n = 1000
    emp_rs, _ = sample_law(ActionLevelRS(horizon=H, choice=Enumerate()), lm, v, n)
    emp_vgb, _ = sample_law(
        VGB(horizon=H, lazy=True, choice=Enumerate(), steps_per_try=80, max_tries=400), lm, v, n
    )
    emp_prac, _ = sample_law(VGB(horizon=H, choice=Enumerate()), lm, v, n)
    # binomial sd at n = 1000 is <= 0.013: 0.05 is > 3.8 sd
    assert abs(pushforward(emp_rs, first)[0] - p_ref) < 0.05
    assert abs(pushforward(emp_vgb, first)[0] - p_star) < 0.05
    # the practical (first-leaf) walk is not exact here, but moves most of the way to pi*
    assert pushforward(emp_prac, first)[0] > (p_ref + p_star) / 2


@pytest.mark.parametrize("drift", [1.0, 0.5])
def test_lazy_walk_visits_match_closed_form_stationary_law(drift):
    # any V^ works: use a perturbed one; the law is proportional to incident edge conductances
    lm = toy.TabularLM.random(2, seed=5)
    H = 3
    v = toy.PerturbedValue(lm, parity_tilt, H, eps=0.7, action=1)
    law = laws.stationary_law(laws.WalkTree(lm, v, H), drift=drift)
    run = Run(lm, v, (), horizon=H, actions=Tokens(), drift=drift, seed=11)
    walk = Walk(run, Enumerate(), lazy=True)
    T = 200_000
    visits: dict = {}
    for _ in range(T):
        walk.step()
        visits[walk.node.tokens] = visits.get(walk.node.tokens, 0) + 1
    emp = {k: c / T for k, c in visits.items()}
    # 15 nodes; correlated samples (mixing ~ 20 steps) -> effective n ~ 1e4: noise TV ~ 0.02
    assert toy.tv(emp, law) < 0.02  # measured ~0.005 on three seeds
    uniform = {k: 1 / len(law) for k in law}
    assert toy.tv(uniform, law) > 0.1  # the closed form is not trivially uniform


def test_memoization_revisits_cost_no_model_or_verifier_calls():
    lm = toy.TabularLM.random(3, seed=2)
    H = 5
    v = toy.ExactValue(lm, parity_tilt, H)
    r = VGB(horizon=H, choice=Enumerate()).sample(lm, v, seed=4)
    assert r.stats.backtracks > 5  # the walk really revisits nodes
    # every pi_ref row was requested once; the count equals the forward-token accounting
    assert len(lm.prefixes_seen) == len(set(lm.prefixes_seen)) == r.stats.forward_tokens
    walk_nodes_visited_many_times = r.stats.steps
    assert r.stats.forward_tokens < walk_nodes_visited_many_times
    assert lm.calls == r.stats.model_calls
    # verifier: one V^/tau per node ever valued, never twice
    assert r.stats.verifier_evals <= r.stats.nodes


def test_same_seed_same_output_different_seeds_differ():
    lm = toy.TabularLM.random(4, seed=0)
    v = toy.PerturbedValue(lm, parity_tilt, 6, eps=0.5, action=2)
    s = VGB(horizon=6, choice=SelfNormalized(3))
    a = [s.sample(lm, v, seed=7) for _ in range(3)]
    assert all(x.tokens == a[0].tokens and x.stats.steps == a[0].stats.steps for x in a)
    outs = {s.sample(lm, v, seed=k).tokens for k in range(20)}
    assert len(outs) > 5


def depth_walk_hitting_time(H: int, p_up: float) -> float:
    """Expected steps from depth 0 to depth H: root always goes down, else up w.p. p_up."""
    # E_h = 1 + p E_{h-1} + (1-p) E_{h+1}, E_0 = 1 + E_1, E_H = 0: solve the linear system
    A = np.zeros((H, H))
    b = np.ones(H)
    for h in range(H):
        A[h, h] = 1
        if h == 0:
            if H > 1:
                A[0, 1] = -1
        else:
            A[h, h - 1] = -p_up
            if h + 1 < H:
                A[h, h + 1] = -(1 - p_up)
    return float(np.linalg.solve(A, b)[0])


def test_drift_keeps_target_law_equal_depths():
    lm = toy.TabularLM.random(3, seed=8)
    H = 3
    v = toy.ExactValue(lm, parity_tilt, H)
    pi_star = toy.target(lm, parity_tilt, H)
    n = 3000
    thr = tv_threshold(len(pi_star), n)
    emp, _ = sample_law(VGB(horizon=H, drift=0.4, choice=Enumerate()), lm, v, n)
    assert toy.tv(emp, pi_star) < thr


def test_padding_keeps_target_law_with_early_eos_leaves_at_any_drift():
    # token 2 is EOS (prob 0.3): responses end at depths 1..4; padded to depth 4, every leaf has
    # conductance pi_ref * tau * lambda^-4, so the lazy walk's leaf law is pi* for any lambda
    lm = toy.TabularLM.random(3, seed=9, eos_token_id=2, eos_prob=0.3)
    H = 4
    tilt = lambda y: 1.0 if y.count(0) % 2 == 0 else 0.1  # noqa: E731
    v = toy.ExactValue(lm, tilt, H)
    pi_star = toy.target(lm, tilt, H)
    n = 1000
    thr = tv_threshold(len(pi_star), n)
    emp, _ = sample_law(
        VGB(horizon=H, drift=0.5, lazy=True, steps_per_try=60, max_tries=500, choice=Enumerate()),
        lm,
        v,
        n,
    )
    assert toy.tv(emp, pi_star) < thr
    # without padding the lazy walk's leaf law is pi_ref * tau * lambda^-depth: off here
    wrong = {y: p * 0.5 ** -len(y) for y, p in pi_star.items()}
    z = sum(wrong.values())
    wrong = {y: p / z for y, p in wrong.items()}
    assert toy.tv(wrong, pi_star) > 2 * thr
    # and the practical walk (first leaf) is exact with the exact value, shallow leaves or not
    emp, res = sample_law(VGB(horizon=H, choice=Enumerate()), lm, v, n)
    assert toy.tv(emp, pi_star) < thr
    assert sum(r.stats.pad_returns for r in res) > n / 4  # the pad coin really sends it back


def test_drift_cuts_steps_to_a_leaf_from_h_squared_toward_h():
    lm = toy.TabularLM.uniform(2)
    H = 10
    v = toy.ExactValue(lm, lambda y: 1.0, H)  # exact V*: up with prob lambda / (1 + lambda)
    means = {}
    for drift in (1.0, 0.5, 0.2):
        res = [
            VGB(horizon=H, drift=drift, choice=Enumerate()).sample(lm, v, seed=s)
            for s in range(600)
        ]
        means[drift] = float(np.mean([r.stats.steps for r in res]))
        expected = depth_walk_hitting_time(H, drift / (1 + drift))
        # sd of the hitting time <= 0.85 H^2 for lambda = 1 -> standard error 3.5%: 12% is > 3 se
        assert abs(means[drift] - expected) / expected < 0.12, (drift, means[drift], expected)
    assert means[1.0] > 0.8 * H * H  # about H^2 = 100
    assert means[0.2] < 2 * H  # about H / (1 - 2p) = 1.67 H
