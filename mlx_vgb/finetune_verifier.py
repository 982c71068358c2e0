"""A verifier on a fine-tuned copy of the model: the value head trained jointly with the top N
transformer layers (and the final norm) of a copy of the generator or of ``--backbone``.

A head on the frozen generator reads what the generator already computes; a head on a frozen
*copy* reads the same states, so it is the same head. What a separate verifier of the same size
adds is its own weights: here the copy's top ``N`` layers learn from the rollouts too.

Training cost: the bottom layers stay frozen, so their output (the input of layer L - N) is
computed once per rollout (a prompt's rollouts share its prompt pass) and kept on disk prompt by
prompt (a killed run resumes); each step then runs only the top N layers: the prompt once, its
rollouts' completions batched against the prompt's keys and values. Warm start: the head
trained on the frozen features (the same settings as a frozen head), so epoch 0 is the frozen
verifier; the loss is the weighted BCE of ``value_training.train_head`` on the same
standardized features (scale from the frozen features, folded into the head at the end).

The result is a complete mlx-lm model folder (the copy with its new top layers) in the
verifier folder's ``backbone/``: ``--verifier model:OUT`` runs it as a separate model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_map

from .errors import ConfigError
from .rollouts import Rollout
from .value_training import (
    DEFAULT_FEATURE_BATCH,
    ValueMetrics,
    ValueTargets,
    _length_batches,
    evaluate,
    fold_scale,
    prompt_group_states,
    train_head,
)
from .verifier_format import ValueHead

DEFAULT_FINETUNE_LR = 1e-5
DEFAULT_FINETUNE_EPOCHS = 2


class _Capture:
    """A cache for the prompt pass: keeps the keys and values (in the autodiff graph)."""

    offset = 0

    def update_and_fetch(self, keys, values):
        self.keys, self.values = keys, values
        return keys, values


class _Prefix:
    """A cache for the completion pass: the prompt's keys and values before each row's own."""

    def __init__(self, cap: _Capture, rows: int):
        self.offset = cap.keys.shape[2]
        shape = (rows, *cap.keys.shape[1:])
        self.keys = mx.broadcast_to(cap.keys, shape)
        self.values = mx.broadcast_to(cap.values, (rows, *cap.values.shape[1:]))

    def update_and_fetch(self, keys, values):
        return (
            mx.concatenate([self.keys, keys], axis=2),
            mx.concatenate([self.values, values], axis=2),
        )


class Tower(nn.Module):
    """The trainable top of the copy: its last layers, its final norm and the value head
    (reading standardized states; ``fold_scale`` makes it read raw ones at the end)."""

    def __init__(self, layers: list, norm, head: ValueHead):
        super().__init__()
        self.layers = layers
        self.norm = norm
        self.head = head

    def states(self, group: _Group) -> mx.array:
        """Final normed states at the group's target positions, (n_targets, d)."""
        caps = [_Capture() for _ in self.layers]
        h = group.prompt[None]
        for layer, c in zip(self.layers, caps):
            h = layer(h, "causal", c)
        parts = [self.norm(h)[0]]
        P = group.prompt.shape[0]
        for x in group.batches:
            B, T = x.shape[:2]
            # query q (position P + q) sees the prompt and completion positions <= its own
            mask = mx.arange(P + T)[None, :] <= (P + mx.arange(T))[:, None]
            h = x
            for layer, c in zip(self.layers, caps):
                h = layer(h, mask, _Prefix(c, B))
            parts.append(self.norm(h).reshape(B * T, -1))
        return mx.concatenate(parts, axis=0)[group.gather]


@dataclass
class _Group:
    """One prompt's rollouts: the layer inputs of the prompt (P, d) and of its completions in
    padded batches (B, T, d); ``gather``: each target's row in the concatenation of the prompt's
    outputs and the flattened batches; ``rows``: those targets' indices in ValueTargets."""

    prompt: mx.array
    batches: list[mx.array]
    gather: mx.array
    rows: np.ndarray


def _groups(
    model,
    rollouts: Sequence[Rollout],
    targets: ValueTargets,
    k: int,
    cache_dir: Path | None,
    batch_size: int,
    pad_id: int,
    log,
    forward_batch: int = DEFAULT_FEATURE_BATCH,
) -> list[_Group]:
    """The input of layer ``k`` for every target's rollout, grouped by prompt (kept in
    ``cache_dir`` prompt by prompt)."""
    by_rollout: dict[int, list[int]] = {}
    for t, (j, _) in enumerate(targets.source):
        by_rollout.setdefault(int(j), []).append(t)
    need = sorted(by_rollout)
    by_prompt: dict[tuple, list[int]] = {}
    for j in need:  # by id too: the split is by prompt id, a group never straddles it
        by_prompt.setdefault((rollouts[j].prompt_id, tuple(rollouts[j].prompt_ids)), []).append(j)
    out = []
    t0 = time.perf_counter()
    for g, (prompt, members) in enumerate(by_prompt.items()):
        part = cache_dir / f"{g:05d}.npz" if cache_dir else None
        arrays = None
        if part is not None and part.is_file():
            z = np.load(part)
            if z["members"].tolist() == members:
                arrays = (z["prompt"], [z[f"c{j}"] for j in members])
        if arrays is None:
            sub = [rollouts[j] for j in members]
            ((_, ph, comps),) = list(
                prompt_group_states(model, sub, batch_size=forward_batch, pad_id=pad_id, layers=k)
            )
            arrays = (ph, [comps[i] for i in range(len(members))])
            if part is not None:
                part.parent.mkdir(parents=True, exist_ok=True)
                tmp = part.with_name(part.name + ".tmp.npz")
                np.savez(
                    tmp,
                    members=np.asarray(members),
                    prompt=ph,
                    **{f"c{j}": c for j, c in zip(members, arrays[1])},
                )
                tmp.replace(part)
            if log:
                log(
                    f"layer-{k} inputs: prompt {g + 1}/{len(by_prompt)} "
                    f"{time.perf_counter() - t0:.0f}s"
                )
        out.append(_group(prompt, members, arrays, by_rollout, targets, batch_size))
    return out


def _group(prompt, members, arrays, by_rollout, targets, batch_size) -> _Group:
    ph, comps = arrays
    P, d = ph.shape
    lengths = [len(c) for c in comps]
    batches, where, base = [], {}, P
    # batches of similar lengths (padding bounded)
    for idx in _length_batches(list(range(len(members))), [max(1, n) for n in lengths], batch_size):
        T = max(1, max(lengths[i] for i in idx))
        x = np.zeros((len(idx), T, d), dtype=np.float32)
        for r, i in enumerate(idx):
            x[r, : lengths[i]] = comps[i]
            where[i] = base + r * T
        batches.append(mx.array(x))
        base += len(idx) * T
    gather, rows = [], []
    for i, j in enumerate(members):
        for t in by_rollout[j]:
            p = int(targets.source[t, 1])
            gather.append(P - 1 if p == P - 1 else where[i] + p - P)
            rows.append(t)
    return _Group(mx.array(ph), batches, mx.array(np.asarray(gather)), np.asarray(rows))


@dataclass
class FinetuneResult:
    head: ValueHead  # reads the fine-tuned copy's raw final states
    frozen_train: ValueMetrics
    frozen_held_out: ValueMetrics | None
    train: ValueMetrics
    held_out: ValueMetrics | None
    losses: list[float]  # per epoch, epoch 0 = the warm start (the frozen head)
    wall_s: float
    values: np.ndarray  # the fine-tuned verifier's value at every target


def finetune_verifier(
    backbone,
    rollouts: Sequence[Rollout],
    targets: ValueTargets,
    features: np.ndarray,
    *,
    layers: int,
    train_idx: np.ndarray,
    held_idx: np.ndarray | None = None,
    hidden_dims: Sequence[int] = (),
    head_epochs: int = 3,
    head_lr: float = 3e-4,
    epochs: int = DEFAULT_FINETUNE_EPOCHS,
    lr: float = DEFAULT_FINETUNE_LR,
    seed: int = 0,
    cache_dir: Path | None = None,
    batch_size: int = 16,
    pad_id: int = 0,
    log: Callable[[str], None] | None = print,
) -> FinetuneResult:
    """Fine-tune ``backbone``'s top ``layers`` layers and final norm (in place: pass a copy
    of the generator, not the generator) jointly with a value head. ``features``: the frozen
    backbone's final states at the targets (for the warm start and the scale)."""
    t0 = time.perf_counter()
    inner = getattr(backbone, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "norm"):
        raise ConfigError("--finetune-layers needs an mlx-lm model with .model.layers and .norm")
    n = len(inner.layers)
    if not 1 <= layers < n:
        raise ConfigError(
            f"--finetune-layers must be in 1..{n - 1}: the backbone has {n} layers and at least "
            "the first stays frozen"
        )
    check_trainable(backbone)
    warm = train_head(
        features,
        targets,
        train_idx=train_idx,
        held_idx=held_idx,
        hidden_dims=hidden_dims,
        epochs=head_epochs,
        lr=head_lr,
        seed=seed,
        log=None,
        fold=False,
    )
    mu, sd = warm.scale
    mu_x, sd_x = mx.array(mu.astype(np.float32)), mx.array(sd.astype(np.float32))
    groups = _groups(backbone, rollouts, targets, n - layers, cache_dir, batch_size, pad_id, log)
    tower = Tower(list(inner.layers[n - layers :]), inner.norm, warm.head)
    train_set = set(train_idx.tolist())
    train_groups = [g for g in groups if g.rows.size and int(g.rows[0]) in train_set]
    w_all = targets.counts.astype(np.float32)
    w_scale = float(w_all[train_idx].mean())
    Y = targets.means.astype(np.float32)

    def loss_fn(model, g: _Group, y, w):
        z = model.head.logits((model.states(g) - mu_x) / sd_x)[..., 0]
        return (w * nn.losses.binary_cross_entropy(z, y, with_logits=True, reduction="none")).sum()

    def predict(gs) -> tuple[np.ndarray, np.ndarray]:
        vals, rows = [], []
        for g in gs:
            v = tower.head((tower.states(g) - mu_x) / sd_x)
            vals.append(np.array(v, dtype=np.float64))
            rows.append(g.rows)
        return np.concatenate(vals), np.concatenate(rows)

    def epoch_loss() -> float:
        tot = 0.0
        for g in train_groups:
            y, w = mx.array(Y[g.rows]), mx.array(w_all[g.rows] / w_scale)
            tot += loss_fn(tower, g, y, w).item()
        return tot / len(train_idx)

    grad_fn = nn.value_and_grad(tower, loss_fn)
    opt_layers = optim.AdamW(learning_rate=lr, weight_decay=0.0)
    opt_head = optim.AdamW(learning_rate=head_lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = [epoch_loss()]
    if log:
        log(f"fine-tune: warm start (the frozen head) loss {losses[0]:.4f}")
    for ep in range(epochs):
        tot = 0.0
        for gi in rng.permutation(len(train_groups)):
            g = train_groups[gi]
            y, w = mx.array(Y[g.rows]), mx.array(w_all[g.rows] / w_scale)
            loss, grads = grad_fn(tower, g, y, w)
            scale = 1.0 / len(g.rows)  # a step follows the group's mean loss
            grads = tree_map(lambda x: x * scale, grads)
            head_grads = grads.pop("head")
            opt_layers.update(tower, grads)
            opt_head.update(tower.head, head_grads)
            mx.eval(tower.parameters(), opt_layers.state, opt_head.state)
            tot += loss.item()
        losses.append(tot / len(train_idx))
        if log:
            log(f"fine-tune epoch {ep + 1}/{epochs}  loss {losses[-1]:.4f}")
    fold_scale(tower.head, mu, sd)  # the saved head reads the copy's raw final states
    mu_x, sd_x = mx.zeros_like(mu_x), mx.ones_like(sd_x)
    vals, rows = predict(groups)
    values = np.zeros(len(targets))
    values[rows] = vals
    train_m = evaluate(values[train_idx], targets.subset(train_idx))
    held_m = None
    if held_idx is not None and len(held_idx):
        held_m = evaluate(values[held_idx], targets.subset(held_idx))
    return FinetuneResult(
        tower.head,
        warm.train,
        warm.held_out,
        train_m,
        held_m,
        losses,
        time.perf_counter() - t0,
        values,
    )


def check_trainable(model) -> None:
    """Fine-tuning needs float32 weights: quantized ones cannot take gradients, and in bf16 /
    fp16 Adam's small updates round away (the run would be a frozen head trained longer)."""
    flat = _flat(model)
    if any(k.endswith(".scales") for k, _ in flat):
        raise ConfigError(
            "--finetune-layers needs unquantized float32 weights; this model is quantized. "
            "Convert it without quantization (`mlx-vgb models pull NAME` gives float32)"
        )
    other = sorted({str(v.dtype).split(".")[-1] for _, v in flat if v.dtype != mx.float32})
    if other:
        raise ConfigError(
            f"--finetune-layers needs float32 weights, this model has {', '.join(other)}: "
            "small updates would round away. Convert it in float32 (`mlx-vgb convert ... "
            "--dtype float32` or `mlx-vgb models pull NAME`)"
        )


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


def save_backbone(model, src: str | Path, dst: Path) -> None:
    """The fine-tuned copy as an mlx-lm model folder: ``src``'s config and tokenizer files,
    the copy's weights."""
    import shutil

    from mlx_lm.utils import save_model

    src = Path(src)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    save_model(dst, model)


def cache_dir_for(work: Path, rollouts: Sequence[Rollout], model: str, k: int) -> Path:
    """Where the layer-k inputs of these rollouts are kept (the name hashes what they depend
    on)."""
    h = hashlib.sha256(json.dumps([model, k]).encode())
    for r in rollouts:
        h.update(json.dumps([r.prompt_id, r.index, list(r.prompt_ids), r.completion_ids]).encode())
    return work / f"layer{k}-inputs-{h.hexdigest()[:16]}"
