"""The forward-only baselines on a toy tree: each samples the law it should."""

import pytest
from stats_util import tv_threshold

from mlx_vgb import (
    Backtrack,
    BestOfN,
    BlockBestOfN,
    BlockRS,
    Blocks,
    OutcomeLevelRS,
    Plain,
    toy,
)

H = 4


def tilt(y):
    return 1.0 if y.count(0) % 2 == 0 else 0.1


@pytest.fixture(scope="module")
def setup():
    lm = toy.TabularLM.random(3, seed=1)
    return lm, toy.ExactValue(lm, tilt, H), toy.leaves(lm, H), toy.target(lm, tilt, H)


def law(sampler, lm, v, n=3000):
    res = [sampler.sample(lm, v, seed=i) for i in range(n)]
    assert all(r.reached_leaf for r in res)
    return toy.empirical([r.tokens for r in res]), res


def test_plain_samples_pi_ref(setup):
    lm, v, ref, star = setup
    emp, _ = law(Plain(horizon=H), lm, v)
    thr = tv_threshold(len(ref), 3000)  # 81 outcomes: ~0.12
    assert toy.tv(emp, ref) < thr < toy.tv(ref, star)


def test_outcome_rejection_samples_pi_star_and_streams_its_rejections(setup):
    lm, v, ref, star = setup
    emp, res = law(OutcomeLevelRS(horizon=H, max_tries=200), lm, v)
    assert toy.tv(emp, star) < tv_threshold(len(star), 3000)
    assert sum(r.stats.restarts for r in res) > 100  # it really rejects
    evs = list(OutcomeLevelRS(horizon=H).stream(lm, v, seed=3))
    n_back = sum(isinstance(e, Backtrack) for e in evs)
    assert n_back == evs[-1].result.stats.restarts


def test_block_rejection_with_exact_value_samples_pi_star(setup):
    # accept each block with prob V*(s.z) / 1: exact ActionLevelRS unless n tries all fail
    lm, v, ref, star = setup
    emp, _ = law(BlockRS(horizon=H, actions=Blocks(2), n=64), lm, v)
    assert toy.tv(emp, star) < tv_threshold(len(star), 3000)


def test_best_of_n_keeps_the_best_response(setup):
    lm, v, ref, star = setup
    p_good = sum(p for y, p in ref.items() if tilt(y) == 1.0)
    assert (1 - p_good) ** 16 * 30 < 1e-3  # 16 tries: a bad best-of-16 in 30 runs is < 0.1%
    for seed in range(30):
        r = BestOfN(horizon=H, n=16).sample(lm, v, seed=seed)
        assert r.tilt == 1.0
    r = BlockBestOfN(horizon=H, actions=Blocks(2), n=4).sample(lm, v, seed=0)
    assert r.stats.steps == 2 and len(r.tokens) == H
