"""The Dyck LM trainer's long-run tooling (issue #16, stage B): checkpoints that resume to the
same weights as an uninterrupted run, AdamW, and the validity measurement against its exact
value."""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_vgb.tasks import dyck
from mlx_vgb.tasks.train_dyck_lm import Unfinished, model_args, sample_validity, train_lm

TINY = dict(hidden=16, layers=1, heads=2, intermediate=32)


def _weights(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, optimizer):
    args = model_args(**TINY)
    kw = dict(steps=8, batch=8, lr=3e-3, warmup=2, seed=3, optimizer=optimizer, log=None)
    whole, whole_losses = train_lm(args, **kw)
    ckpt = tmp_path / "lm.ckpt"
    with pytest.raises(Unfinished) as stop:
        train_lm(args, checkpoint=ckpt, checkpoint_every=3, stop_after=3, **kw)
    assert stop.value.step == 3 and (ckpt / "state.json").exists()
    resumed, losses = train_lm(args, checkpoint=ckpt, checkpoint_every=3, **kw)
    assert len(losses) == 8
    np.testing.assert_allclose(losses, whole_losses, rtol=1e-6)
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # the optimizers differ: AdamW's decay moves the weights elsewhere than Adam's
    if optimizer == "adamw":
        plain, _ = train_lm(args, **{**kw, "optimizer": "adam"})
        assert any(not np.allclose(a[k], v) for k, v in _weights(plain).items())


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    args = model_args(**TINY)
    kw = dict(steps=6, batch=4, warmup=1, log=None, checkpoint=tmp_path / "c", checkpoint_every=2)
    with pytest.raises(Unfinished):
        train_lm(args, stop_after=2, **kw)
    with pytest.raises(ValueError, match="another configuration"):
        train_lm(args, lr=1e-2, **kw)


def _exact_validity(model, prompt: tuple[int, ...]) -> float:
    """P(the LM's completion of ``prompt`` is valid), summed over every valid completion
    (breadth-first over the valid prefixes; one batched forward per depth)."""
    total, level = 0.0, [((dyck.BOS, *prompt), 0.0)]
    while level:
        x = mx.array([p for p, _ in level], dtype=mx.int32)
        logits = model(x)[:, -1, :].astype(mx.float32)
        logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        nxt = []
        for (p, lp), row in zip(level, logp):
            body = p[1:]
            if len(body) == dyck.LENGTH:
                if dyck.is_valid(body):
                    total += math.exp(lp + row[dyck.EOS])
                continue
            for t in range(2 * dyck.NUM_TYPES):
                if dyck.is_valid_prefix(body + (t,)):
                    nxt.append((p + (t,), lp + row[t]))
        level = nxt
    return total


def test_sampled_validity_matches_the_exact_probability(shipped):
    model = shipped[0]
    s = dyck.sample_strings(1, np.random.default_rng(5), dyck.OOD_TYPE_PROBS)[0]
    prompt = tuple(int(t) for t in s[:25])  # 7 brackets + <eos> left: a few hundred paths
    exact = _exact_validity(model, prompt)
    n = 600
    got = sample_validity(model, n, seed=0, prompts=[{"prompt": dyck.decode(prompt)}])
    sd = math.sqrt(exact * (1 - exact) / n)
    assert 0.05 < exact < 0.95  # an informative prompt (neither always nor never valid)
    assert abs(got - exact) < 4 * sd, (got, exact, sd)  # 4 sd: a false alarm ~6e-5
