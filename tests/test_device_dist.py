"""The device path of pi_ref's truncation and draws (``mlx_vgb.dist``) against the float64 host
reference it replaced: the same support, the same log-probs, the same law; and the same tokens
whether a row is drawn on the host or on the device."""

import mlx.core as mx
import numpy as np
import pytest
from stats_util import CHI2_ALPHA, chi_square

from mlx_vgb.dist import draw, process_batch, reference_process

SETTINGS = [  # (temp, top_k, top_p)
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (1.0, 0, 0.9),
    (1.3, 0, 0.5),
    (1.0, 5, 1.0),
    (0.8, 20, 0.8),
    (0.0, 0, 1.0),
]


def _rows(b, v, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, v)) * scale
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("v,host_max", [(50, 256), (50, 0), (3000, 256)])
@pytest.mark.parametrize("temp,top_k,top_p", SETTINGS)
def test_device_truncation_matches_host_reference(v, host_max, temp, top_k, top_p):
    # small rows go through the host path by default (host_max 256), forced to the device at 0
    rows = _rows(4, v, seed=v + top_k)
    batch, bad = process_batch(rows, temp, top_k, top_p, normalized=True, host_max=host_max)
    assert (batch._host is not None) == (v <= host_max)
    assert not bad.any()
    for b, d in enumerate(batch.rows()):
        ids, logp = d.support()
        ref_ids, ref_logp = reference_process(rows[b], temp, top_k, top_p).support()
        order = np.argsort(ids)
        np.testing.assert_array_equal(ids[order], np.sort(ref_ids))
        want = dict(zip(ref_ids.tolist(), ref_logp.tolist()))
        np.testing.assert_allclose(logp[order], [want[i] for i in ids[order]], atol=2e-5)


def test_large_nucleus_grows_past_the_first_candidates():
    # rows 0 and 2 flat (0.95 nucleus of thousands of tokens, far beyond 16 candidates), row 1
    # peaked: only the flat rows are redone with more candidates
    rows = _rows(3, 5000, seed=3, scale=0.1)
    rows[1] = _rows(1, 5000, seed=4, scale=8.0)[0]
    batch, _ = process_batch(rows, 1.0, 0, 0.95, nucleus_candidates=16)
    sizes = []
    for b, d in enumerate(batch.rows()):
        ids, logp = d.support()
        ref_ids, ref_logp = reference_process(rows[b], 1.0, 0, 0.95).support()
        order = np.argsort(ids)
        np.testing.assert_array_equal(ids[order], ref_ids)
        np.testing.assert_allclose(logp[order], ref_logp, atol=2e-5)
        sizes.append(len(ids))
    assert sizes[0] > 16 * 8 and sizes[2] > 16 * 8 and sizes[1] <= 16
    ((toks, _),) = draw([(batch.rows()[1], np.linspace(0, 0.999, 50))], host_draw_max=0)
    assert set(toks.tolist()) <= set(batch.rows()[1].support()[0].tolist())


def test_unnormalized_rows_are_normalized_unless_told_otherwise():
    rows = _rows(3, 40, seed=1)
    shifted, _ = process_batch(rows + 5.0, 1.0, 0, 0.9)
    plain, _ = process_batch(mx.array(rows.astype(np.float32)), 1.0, 0, 0.9, normalized=True)
    for a, b in zip(shifted.rows(), plain.rows()):
        np.testing.assert_allclose(a.support()[1], b.support()[1], atol=1e-5)


def test_nan_or_all_minus_inf_rows_are_flagged():
    rows = _rows(3, 10, seed=2)
    rows[1, 4] = np.nan
    rows[2, :] = -np.inf
    _, bad = process_batch(rows)
    assert bad.tolist() == [False, True, True]


@pytest.mark.parametrize("temp,top_k,top_p", SETTINGS)
def test_device_and_host_draws_give_the_same_tokens(temp, top_k, top_p):
    rows = _rows(3, 300, seed=7)
    rows[:, 100:110] = -np.inf  # zero-probability tokens inside the row: never drawn
    batch, _ = process_batch(rows, temp, top_k, top_p)
    u = np.random.default_rng(0).random((3, 500))
    u[:, 0], u[:, 1] = 0.0, np.nextafter(1.0, 0.0)  # the ends of [0, 1)
    reqs = [(d, u[b]) for b, d in enumerate(batch.rows())]
    dev, host = draw(reqs, host_draw_max=0), draw(reqs, host_draw_max=10**9)
    for (t1, lp1), (t2, lp2), (d, _) in zip(dev, host, reqs):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_allclose(lp1, lp2)
        ids, logp = d.support()
        law = dict(zip(ids.tolist(), logp.tolist()))
        assert not np.isin(t1, np.arange(100, 110)).any()
        np.testing.assert_allclose(lp1, [law[t] for t in t1.tolist()], atol=1e-6)


@pytest.mark.parametrize("temp,top_k,top_p", SETTINGS)
def test_small_rows_processed_on_the_host_or_the_device_give_the_same_tokens(temp, top_k, top_p):
    rows = _rows(3, 40, seed=9)
    rows[:, 10:14] = -np.inf
    rows[2, 20] = np.nan  # flagged alike
    host, bad_h = process_batch(rows, temp, top_k, top_p)
    dev, bad_d = process_batch(rows, temp, top_k, top_p, host_max=0)
    assert host._host is not None and dev._host is None
    np.testing.assert_array_equal(bad_h, bad_d)
    u = np.random.default_rng(1).random(400)
    for a, b in list(zip(host.rows(), dev.rows()))[:2]:
        (ta, la), (tb, lb) = draw([(a, u)], host_draw_max=10**9) + draw([(b, u)], host_draw_max=0)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_allclose(la, lb, atol=1e-6)
        ia, pa = a.support()
        ib, pb = b.support()
        np.testing.assert_array_equal(np.sort(ia), np.sort(ib))
        np.testing.assert_allclose(pa[np.argsort(ia)], pb[np.argsort(ib)], atol=1e-6)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_device_draws_follow_the_truncated_law(top_p):
    rows = _rows(1, 12, seed=11, scale=1.0)
    batch, _ = process_batch(rows, 1.0, 0, top_p)
    (d,) = batch.rows()
    ids, logp = d.support()
    u = np.random.default_rng(5).random(20_000)
    ((toks, _),) = draw([(d, u)], host_draw_max=0)
    _, _, p = chi_square(toks.tolist(), dict(zip(ids.tolist(), np.exp(logp).tolist())))
    assert p > CHI2_ALPHA
