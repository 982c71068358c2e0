"""`train-verifier --finetune-layers N`: a verifier on a copy of the model whose top N layers
train with the head. The split forward (frozen bottom once, trainable top per step, a prompt's
keys shared by its rollouts) must give the whole model's states; training must fit better than
the frozen head it starts from; the saved copy must give the values training measured."""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_vgb.errors import ConfigError
from mlx_vgb.finetune_verifier import Tower, _groups, finetune_verifier
from mlx_vgb.rollouts import Rollout
from mlx_vgb.tasks import dyck
from mlx_vgb.tasks.train_dyck_lm import model_args, save_lm
from mlx_vgb.value_training import split_by_prompt, target_features, value_targets
from mlx_vgb.verifier_format import HeadConfig, ValueHead


@pytest.fixture
def lm():
    from mlx_lm.models import llama

    mx.random.seed(0)
    m = llama.Model(model_args(hidden=16, layers=3, heads=2, intermediate=32))
    mx.eval(m.parameters())
    return m


def rollouts(n_prompts=2, seed=0):
    """Prompts of different lengths, completions of lengths 0..14 (two length batches)."""
    rng = np.random.default_rng(seed)
    rs = []
    for pi in range(n_prompts):
        prompt = [dyck.BOS] + [int(x) for x in rng.integers(3, 7, size=8 + 3 * pi)]
        comps = [[3, 4, dyck.EOS], [5, 3, 3, 4, 4, 6], [], [4], [3, 4] * 7]
        comps += [[int(x) for x in rng.integers(3, 7, size=int(rng.integers(1, 10)))]]
        for k, comp in enumerate(comps):
            # a reward the states can learn: the completion holds a 5
            rs.append(Rollout(f"p{pi}", k, prompt, comp, "", float(5 in comp), "stop"))
    return rs


@pytest.mark.parametrize("top", [1, 2])
def test_the_split_forward_gives_the_whole_models_states(lm, top):
    # bottom layers once (a prompt's rollouts on copies of its KV cache), top layers with the
    # prompt's keys broadcast to its rollouts: the final normed states of the whole model at
    # every target, up to float rounding
    rs = rollouts()
    t = value_targets(rs)
    want = target_features(lm, rs, t)
    inner = lm.model
    k = len(inner.layers) - top
    groups = _groups(lm, rs, t, k, None, 4, 0, None)
    head = ValueHead(HeadConfig(dims=[16, 1]))
    tower = Tower(list(inner.layers[k:]), inner.norm, head)
    got = np.zeros_like(want)
    for g in groups:
        got[g.rows] = np.array(tower.states(g))
    assert sorted(np.concatenate([g.rows for g in groups]).tolist()) == list(range(len(t)))
    assert np.abs(got - want).max() < 1e-4
    assert len(inner.layers) == 3  # the bottom-layer view was undone


def test_fine_tuning_fits_better_than_the_frozen_head_it_starts_from(lm):
    rs = rollouts(n_prompts=4, seed=1)
    t = value_targets(rs)
    feats = target_features(lm, rs, t)
    tr = np.arange(len(t))
    res = finetune_verifier(
        lm, rs, t, feats, layers=2, train_idx=tr, head_epochs=3, head_lr=3e-3, epochs=30,
        lr=3e-3, batch_size=4, log=None,
    )  # fmt: skip
    # epoch 0 is the warm start: the loss then falls (more capacity, the same data)
    assert res.losses[-1] < 0.8 * res.losses[0]
    assert res.train.brier < res.frozen_train.brier
    assert res.values.shape == (len(t),) and np.all((res.values >= 0) & (res.values <= 1))
    with pytest.raises(ConfigError, match="1..2"):
        finetune_verifier(lm, rs, t, feats, layers=3, train_idx=tr, log=None)


def test_cli_saves_a_copy_that_gives_the_values_training_measured(lm, tmp_path):
    from mlx_lm import load as mlx_load

    from mlx_vgb.train_verifier import main
    from mlx_vgb.verifier_format import load_verifier

    lm_dir = save_lm(lm, tmp_path / "lm")
    before = {k: np.array(v) for k, v in _flat(mlx_load(str(lm_dir))[0])}
    prompts = tmp_path / "prompts.jsonl"
    dyck.write_prompts(prompts, dyck.make_prompts(8, seed=1, prompt_lengths=(20, 22)))
    out = tmp_path / "verifier"
    argv = [
        "--model", str(lm_dir), "--prompts", str(prompts), "--reward", "dyck", "--out", str(out),
        "--num-rollouts", "3", "--epochs", "2", "--hidden-dims", "", "--finetune-layers", "1",
        "--finetune-epochs", "2", "--finetune-lr", "1e-3", "--no-progress",
    ]  # fmt: skip
    main(argv)
    cfg, head, backbone = load_verifier(out)
    assert backbone is not None and cfg.metadata["finetune"]["layers"] == 1
    tuned, _ = mlx_load(str(backbone))
    after = dict(_flat(tuned))
    changed = {k for k, v in before.items() if not np.array_equal(v, np.array(after[k]))}
    # only the top layer and the final norm moved; the generator's own folder is untouched
    assert changed and all(k.startswith(("model.layers.2.", "model.norm.")) for k in changed)
    assert all(
        np.array_equal(v, np.array(w)) for (_, v), (_, w) in zip(
            sorted(before.items()), sorted(_flat(mlx_load(str(lm_dir))[0]))
        )
    )  # fmt: skip
    # the saved copy's values at the held-out targets are the ones training reported
    from mlx_vgb.rollouts import load_prompts, read_rollouts

    work = tmp_path / "verifier.work"
    order = {p.id: i for i, p in enumerate(load_prompts(prompts))}  # train-verifier's order
    rs = sorted(read_rollouts(work / "rollouts.jsonl"), key=lambda r: (order[r.prompt_id], r.index))
    t = value_targets(rs)
    _, ho = split_by_prompt(t, 0.2, 0)
    vals = np.array(head(mx.array(target_features(tuned, rs, t.subset(ho)))), dtype=np.float64)
    from mlx_vgb.value_training import evaluate

    m = json.loads((work / "metrics.json").read_text())
    assert m["finetune"]["frozen_held_out"] is not None
    assert evaluate(vals, t.subset(ho)).brier == pytest.approx(m["held_out"]["brier"], abs=1e-5)
    # and a walk runs with it as a separate model
    from mlx_vgb.model_verifier import SeparateModelVerifier

    ver = SeparateModelVerifier(out, decode=lambda ids: dyck.decode(ids))
    ver.begin(rs[0].prompt_ids)
    v = ver.value([tuple(rs[0].completion_ids[:2])])
    assert v.shape == (1,) and 0.0 <= v[0] <= 1.0
    with pytest.raises(SystemExit):
        main(argv + ["--force", "--cv", "3"])  # not supported: said, not half-done


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


def test_weights_it_cannot_train_and_settings_it_cannot_honour_are_refused(lm, tmp_path, capsys):
    import copy

    from mlx.utils import tree_map

    from mlx_vgb.finetune_verifier import check_trainable
    from mlx_vgb.train_verifier import main

    check_trainable(lm)  # float32: fine
    half = copy.deepcopy(lm)
    half.update(tree_map(lambda p: p.astype(mx.bfloat16), half.parameters()))
    with pytest.raises(ConfigError, match="float32 weights, this model has bfloat16"):
        check_trainable(half)
    prompts = tmp_path / "prompts.jsonl"
    dyck.write_prompts(prompts, dyck.make_prompts(2, seed=1))
    model = str(save_lm(lm, tmp_path / "lm"))
    base = ["--model", model, "--prompts", str(prompts), "--reward", "dyck", "--out",
            str(tmp_path / "v"), "--finetune-layers", "1", "--no-progress"]  # fmt: skip
    for extra, said in [(["--pooling", "mean"], "--pooling last"), (["--cv", "3"], "--cv with")]:
        with pytest.raises(SystemExit):
            main(base + extra)
        assert said in capsys.readouterr().err
        assert not (tmp_path / "v.work" / "rollouts.jsonl").exists()  # refused before rollouts
