"""Value targets from Monte Carlo rollouts, and an MLP value head trained on them in MLX.

Targets: every rollout of prompt x gives its outcome r to each action boundary it passes: the
prefixes x.y_1..t for t = 0, L, 2L, ... < |y| (L = block length; 1 = every token), and the
complete response x.y itself. Rollouts that
share a prefix are pooled, so a prefix's target is the Monte Carlo estimate of
V*(prefix) = E_{pi_ref}[tau | prefix], weighted by its number of rollouts.

Features: the frozen backbone's final normed hidden state at the prefix's last token (the
verifier format's ``hidden_layer = -1``, ``pooling = "last"``; ``"mean"`` is supported too).
Head: ``mlx_vgb.verifier_format.ValueHead`` (Linear-ReLU-...-Linear, sigmoid), trained with
weighted binary cross-entropy on soft targets, Adam, on standardized features (per-dimension
mean and scale of the training rows, folded into the first layer afterwards, so the saved head
reads raw hidden states). The split is by prompt.
Metrics (``evaluate``): Brier / MSE against the observed outcomes, MSE against the pooled
Monte Carlo means, AUC of the value as a predictor of the outcome, and a calibration table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn

from .errors import ConfigError
from .rollouts import Rollout
from .verifier_format import HeadConfig, ValueHead, pool_hidden

DEFAULT_HIDDEN_DIMS = (128,)
DEFAULT_EPOCHS = 30
DEFAULT_LR = 2e-3
DEFAULT_MINIBATCH = 512
DEFAULT_HOLDOUT = 0.2
DEFAULT_FEATURE_BATCH = 64


@dataclass
class ValueTargets:
    """Pooled targets. Row i: prefix ``prefixes[i]`` (prompt ids + response tokens), observed
    ``successes[i]`` of ``counts[i]`` rollouts; ``source[i] = (rollout row, position)`` is where
    its hidden state is read; ``prompt_ids[i]`` names its prompt."""

    prefixes: list[tuple[int, ...]]
    successes: np.ndarray
    counts: np.ndarray
    source: np.ndarray  # (n, 2) int: rollout index, token position of the prefix's last token
    prompt_ids: list[str]

    @property
    def means(self) -> np.ndarray:
        return self.successes / self.counts

    def __len__(self) -> int:
        return len(self.prefixes)

    def subset(self, idx: np.ndarray) -> ValueTargets:
        return ValueTargets(
            [self.prefixes[i] for i in idx],
            self.successes[idx],
            self.counts[idx],
            self.source[idx],
            [self.prompt_ids[i] for i in idx],
        )


def value_targets(
    rollouts: Sequence[Rollout],
    block: int = 1,
    include_leaves: bool = True,
    boundaries: frozenset[int] | None = None,
) -> ValueTargets:
    """Pool outcomes over the internal action boundaries every rollout passes; with
    ``include_leaves`` also the complete response (target: its own outcome), so the head can
    stand in for tau where no exact outcome check is available at sampling time.

    Boundaries: every ``block``-th token, or with ``boundaries`` (token ids, e.g. those holding a
    newline: line actions) the start and every position right after one of those tokens."""
    if block < 1:
        raise ConfigError(f"block length must be >= 1, got {block}")
    index: dict[tuple[int, ...], int] = {}
    prefixes, succ, cnt, src, pids = [], [], [], [], []
    for j, r in enumerate(rollouts):
        if not 0.0 <= r.reward <= 1.0:
            raise ConfigError(
                f"rollout {r.prompt_id}/{r.index} has reward {r.reward}: value targets need "
                "outcomes in [0, 1] (a success probability); rescale the reward"
            )
        full = tuple(r.prompt_ids) + tuple(r.completion_ids)
        P = len(r.prompt_ids)
        if boundaries is None:
            ts = list(range(0, len(r.completion_ids), block))
        else:
            ids = r.completion_ids
            ts = [0] + [t for t in range(1, len(ids)) if ids[t - 1] in boundaries]
        if include_leaves and r.completion_ids:
            ts.append(len(r.completion_ids))
        for t in ts:
            key = full[: P + t]
            i = index.get(key)
            if i is None:
                index[key] = i = len(prefixes)
                prefixes.append(key)
                succ.append(0.0)
                cnt.append(0)
                src.append((j, P + t - 1))
                pids.append(r.prompt_id)
            succ[i] += r.reward
            cnt[i] += 1
    return ValueTargets(
        prefixes,
        np.asarray(succ),
        np.asarray(cnt, dtype=np.float64),
        np.asarray(src, dtype=np.int64).reshape(-1, 2),
        pids,
    )


def hidden_states(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    hidden_layer: int = -1,
    pooling: str = "last",
    batch_size: int = DEFAULT_FEATURE_BATCH,
    pad_id: int = 0,
) -> list[np.ndarray]:
    """Per-position hidden states (T_i, hidden) of each sequence, from the backbone's final
    normed hidden state (``model.model(x)``). Sequences are right-padded in batches; causal
    attention keeps the padding from reaching real positions."""
    if hidden_layer != -1:
        raise ConfigError(
            f"hidden_layer {hidden_layer} is not supported for training; use -1 (the final, "
            "normed hidden state)"
        )
    inner = getattr(model, "model", None)
    if inner is None:
        raise ConfigError("the backbone has no .model (an mlx-lm model is needed)")
    order = np.argsort([len(s) for s in sequences], kind="stable")
    out: list[np.ndarray | None] = [None] * len(sequences)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        T = max(len(sequences[i]) for i in idx)
        x = np.full((len(idx), T), pad_id, dtype=np.int32)
        for r, i in enumerate(idx):
            x[r, : len(sequences[i])] = sequences[i]
        h = pool_hidden(inner(mx.array(x)), pooling).astype(mx.float32)
        h = np.array(h)
        for r, i in enumerate(idx):
            out[i] = h[r, : len(sequences[i])]
    return out  # type: ignore[return-value]


def target_features(model, rollouts: Sequence[Rollout], targets: ValueTargets, **kw) -> np.ndarray:
    """Hidden state of each target prefix: (n, hidden) float32. With ``pooling="last"`` (the
    default) the rollouts of one prompt share its forward (``shared_prompt_states``)."""
    need = sorted({int(j) for j in targets.source[:, 0]})
    if kw.get("pooling", "last") == "last" and kw.get("hidden_layer", -1) == -1:
        hs = shared_prompt_states(
            model,
            [rollouts[j] for j in need],
            batch_size=kw.get("batch_size", DEFAULT_FEATURE_BATCH),
            pad_id=kw.get("pad_id", 0),
        )
        hs = dict(zip(need, hs))
        return np.stack([hs[j](int(p)) for j, p in targets.source]).astype(np.float32)
    seqs = [list(rollouts[j].prompt_ids) + list(rollouts[j].completion_ids) for j in need]
    full = dict(zip(need, hidden_states(model, seqs, **kw)))
    return np.stack([full[j][p] for j, p in targets.source]).astype(np.float32)


def shared_prompt_states(
    model, rollouts: Sequence[Rollout], *, batch_size: int = DEFAULT_FEATURE_BATCH, pad_id: int = 0
) -> list:
    """The final hidden states of each rollout's positions P - 1 .. P + T - 1 (the last prompt
    token and the completion), as functions ``position -> (hidden,)``. Each distinct prompt is
    run once; its rollouts' completions then run in batches on copies of its KV cache (right
    padding: causal attention keeps it from the real positions). The same states as running
    every whole sequence, up to float rounding."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    out: list = [None] * len(rollouts)
    if not all(type(c) is KVCache for c in make_prompt_cache(model)):  # rotating / SSM
        for i, h in enumerate(
            hidden_states(
                model,
                [list(r.prompt_ids) + list(r.completion_ids) for r in rollouts],
                pad_id=pad_id,
            )
        ):
            out[i] = lambda p, h=h: h[p]
        return out
    for _, prompt_h, comps in prompt_group_states(
        model, rollouts, batch_size=batch_size, pad_id=pad_id
    ):
        P, last = len(prompt_h), prompt_h[-1]
        for i, hr in comps.items():
            out[i] = lambda p, hr=hr, last=last, P=P: last if p == P - 1 else hr[p - P]
    return out


def prompt_group_states(
    model,
    rollouts: Sequence[Rollout],
    *,
    batch_size: int = DEFAULT_FEATURE_BATCH,
    pad_id: int = 0,
    layers: int | None = None,
):
    """Per distinct prompt: ``(members, prompt states (P, d), {member: completion states (T,
    d)})``, numpy float32, in rollout order of first appearance. The prompt runs once; its
    rollouts' completions run in batches on copies of its KV cache. States: the final normed
    hidden state, or with ``layers = k`` the input of transformer layer k (the output of the
    first k layers, no final norm). Needs plain KV caches (``KVCache``)."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise ConfigError("the backbone has no .model.layers (an mlx-lm model is needed)")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rollouts):
        groups.setdefault(tuple(r.prompt_ids), []).append(i)
    with bottom_layers(model, layers):
        for prompt, members in groups.items():
            P = len(prompt)
            cache = make_prompt_cache(model)[: len(inner.layers)]
            if not all(type(c) is KVCache for c in cache):
                raise ConfigError("this backbone's caches are not plain KV caches")
            prompt_h = np.array(inner(mx.array([list(prompt)]), cache=cache)[0].astype(mx.float32))
            comps: dict[int, np.ndarray] = {}
            for i in members:
                if not rollouts[i].completion_ids:
                    comps[i] = prompt_h[:0]
            for idx in _length_batches(
                [i for i in members if rollouts[i].completion_ids],
                [len(r.completion_ids) for r in rollouts],
                batch_size,
            ):
                T = max(len(rollouts[i].completion_ids) for i in idx)
                x = np.full((len(idx), T), pad_id, dtype=np.int32)
                for r, i in enumerate(idx):
                    x[r, : len(rollouts[i].completion_ids)] = rollouts[i].completion_ids
                rows = []
                for c in cache:
                    k = KVCache()
                    k.keys = mx.repeat(c.keys[..., :P, :], len(idx), axis=0)
                    k.values = mx.repeat(c.values[..., :P, :], len(idx), axis=0)
                    k.offset = P
                    rows.append(k)
                h = np.array(inner(mx.array(x), cache=rows).astype(mx.float32))
                for r, i in enumerate(idx):
                    comps[i] = h[r, : len(rollouts[i].completion_ids)]
            yield members, prompt_h, comps


class bottom_layers:
    """``with bottom_layers(model, k):`` the inner model runs its first ``k`` transformer
    layers only and skips the final norm (its output: the input of layer k); ``k = None``:
    unchanged. Restored on exit."""

    def __init__(self, model, k: int | None):
        self.inner, self.k = model.model, k

    def __enter__(self):
        if self.k is not None:
            n = len(self.inner.layers)
            if not 0 <= self.k <= n:
                raise ConfigError(f"the backbone has {n} layers, cannot stop after {self.k}")
            self.saved = (self.inner.layers, self.inner.norm)
            self.inner.layers = self.inner.layers[: self.k]
            self.inner.norm = lambda h: h
        return self

    def __exit__(self, *exc):
        if self.k is not None:
            self.inner.layers, self.inner.norm = self.saved


def _length_batches(members: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """``members`` in batches of <= ``batch_size``, shortest first, a new batch whenever the
    next one would pad the batch past 1.5x its real tokens: a forward's cost is rows x the
    longest row, and a few long rollouts would otherwise set it for all their prompt's rows."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(members, key=lambda i: lengths[i]):
        real = sum(lengths[j] for j in cur) + lengths[i]
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * lengths[i] > 1.5 * real):
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def split_by_prompt(
    targets: ValueTargets, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out): a seeded random ``holdout`` fraction of prompts is held out."""
    ids = sorted(set(targets.prompt_ids))
    if not 0 <= holdout < 1:
        raise ConfigError(f"holdout fraction must be in [0, 1), got {holdout}")
    n_out = round(holdout * len(ids))
    if holdout > 0 and n_out == 0 and len(ids) > 1:
        n_out = 1
    rng = np.random.default_rng(seed)
    out = set(rng.permutation(len(ids))[:n_out].tolist())
    held = {ids[i] for i in out}
    mask = np.array([p in held for p in targets.prompt_ids], dtype=bool)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class CalibrationBin:
    lo: float
    hi: float
    weight: float  # rollout outcomes in the bin
    mean_value: float  # mean predicted V^
    mean_outcome: float  # observed success rate


@dataclass
class ValueMetrics:
    brier: float  # mean (V^ - outcome)^2 over (prefix, rollout) pairs
    mse_mc: float  # mean (V^ - Monte Carlo mean)^2, weighted by rollouts
    auc: float  # P(V^ of a success prefix > V^ of a failure prefix), ties count 1/2
    n_prefixes: int
    n_outcomes: int
    base_rate: float  # mean outcome
    calibration: list[CalibrationBin] = field(default_factory=list)
    # the AUC within each prompt (its success and failure prefixes only), pooled over prompts
    # with both, weighted by their pairs: how well V^ ranks prefixes of one problem -- what a
    # walk compares -- apart from telling easy problems from hard ones
    within_auc: float = float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("auc", "within_auc"):
            if np.isnan(d[k]):
                d[k] = None  # one class only: AUC undefined (JSON has no NaN)
        return d

    def calibration_table(self) -> str:
        rows = ["| V^ bin | outcomes | mean V^ | observed success |", "|---|---:|---:|---:|"]
        for b in self.calibration:
            rows.append(
                f"| {b.lo:.1f}-{b.hi:.1f} | {b.weight:.0f} | {b.mean_value:.3f} | "
                f"{b.mean_outcome:.3f} |"
            )
        return "\n".join(rows)


def weighted_auc(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC with per-score positive / negative weights (pooled prefixes); ties count 1/2."""
    order = np.argsort(scores, kind="stable")
    s, p, n = scores[order], pos[order], neg[order]
    _uniq, start = np.unique(s, return_index=True)
    P = np.add.reduceat(p, start)
    N = np.add.reduceat(n, start)
    neg_below = np.cumsum(N) - N
    total = p.sum() * n.sum()
    if total <= 0:
        return float("nan")
    return float(((neg_below + 0.5 * N) * P).sum() / total)


def evaluate(values: np.ndarray, targets: ValueTargets, bins: int = 10) -> ValueMetrics:
    v = np.asarray(values, dtype=np.float64)
    s, c = targets.successes, targets.counts
    f = c - s
    w = c.sum()
    brier = float(((1 - v) ** 2 * s + v**2 * f).sum() / w)
    mse_mc = float((c * (v - s / c) ** 2).sum() / w)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(v, edges[1:-1]), 0, bins - 1)
    cal = []
    for b in range(bins):
        m = which == b
        if c[m].sum() > 0:
            cal.append(
                CalibrationBin(
                    float(edges[b]),
                    float(edges[b + 1]),
                    float(c[m].sum()),
                    float((c[m] * v[m]).sum() / c[m].sum()),
                    float(s[m].sum() / c[m].sum()),
                )
            )
    return ValueMetrics(
        brier,
        mse_mc,
        weighted_auc(v, s, f),
        len(v),
        int(w),
        float(s.sum() / w),
        cal,
        within_prompt_auc(v, s, f, targets.prompt_ids),
    )


def within_prompt_auc(scores, pos, neg, prompt_ids) -> float:
    """Per-prompt AUCs averaged with weights (positives x negatives of the prompt): the pooled
    AUC restricted to pairs of one prompt. NaN when no prompt has both outcomes."""
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(prompt_ids):
        groups.setdefault(pid, []).append(i)
    num = den = 0.0
    for idx in groups.values():
        idx = np.asarray(idx)
        pairs = pos[idx].sum() * neg[idx].sum()
        if pairs > 0:
            num += pairs * weighted_auc(scores[idx], pos[idx], neg[idx])
            den += pairs
    return float(num / den) if den > 0 else float("nan")


@dataclass
class HeadTraining:
    head: ValueHead
    train: ValueMetrics
    held_out: ValueMetrics | None
    losses: list[float]
    wall_s: float
    scale: tuple[np.ndarray, np.ndarray] | None = None  # (mu, sd) when not folded in


def train_head(
    features: np.ndarray,
    targets: ValueTargets,
    *,
    train_idx: np.ndarray,
    held_idx: np.ndarray | None = None,
    hidden_dims: Sequence[int] = DEFAULT_HIDDEN_DIMS,
    activation: str = "relu",
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_MINIBATCH,
    weight_decay: float = 0.0,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    fold: bool = True,
) -> HeadTraining:
    """Weighted BCE of sigmoid(head(h)) against the pooled Monte Carlo means (weights: rollout
    counts). Deterministic under ``seed`` (initialization and minibatch order). ``fold=False``:
    the head is left reading standardized features, their (mu, sd) in ``scale``."""
    if len(train_idx) == 0:
        raise ConfigError("no training prefixes: collect more rollouts or lower --holdout")
    t0 = time.perf_counter()
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    dim = int(features.shape[1])
    head = ValueHead(
        HeadConfig(dims=[dim, *map(int, hidden_dims), 1], activation=activation, output="sigmoid")
    )
    mx.eval(head.parameters())
    opt = optim.AdamW(learning_rate=lr, weight_decay=weight_decay)
    mu, sd = feature_scale(features[train_idx])
    X = mx.array(((features[train_idx] - mu) / sd).astype(np.float32))
    Y = mx.array(targets.means[train_idx].astype(np.float32))
    W = targets.counts[train_idx].astype(np.float32)
    W = mx.array(W / W.mean())

    def loss_fn(h, x, y, w):
        z = h.logits(x)[..., 0]
        return (w * nn.losses.binary_cross_entropy(z, y, with_logits=True, reduction="none")).mean()

    grad_fn = nn.value_and_grad(head, loss_fn)
    losses = []
    n = len(train_idx)
    for ep in range(epochs):
        perm = rng.permutation(n)
        tot = 0.0
        for s in range(0, n, batch_size):
            b = mx.array(perm[s : s + batch_size])
            loss, g = grad_fn(head, X[b], Y[b], W[b])
            opt.update(head, g)
            mx.eval(head.parameters(), opt.state)
            tot += loss.item() * len(b)
        losses.append(tot / n)
        if log and (ep + 1) % max(1, epochs // 5) == 0:
            log(f"head epoch {ep + 1}/{epochs}  loss {losses[-1]:.4f}")

    if fold:
        fold_scale(head, mu, sd)  # the saved head reads raw hidden states

    def predict(idx):
        x = features[idx] if fold else ((features[idx] - mu) / sd).astype(np.float32)
        return np.array(head(mx.array(x)), dtype=np.float64)

    train_m = evaluate(predict(train_idx), targets.subset(train_idx))
    held_m = None
    if held_idx is not None and len(held_idx):
        held_m = evaluate(predict(held_idx), targets.subset(held_idx))
    scale = None if fold else (mu, sd)
    return HeadTraining(head, train_m, held_m, losses, time.perf_counter() - t0, scale)


def cross_validate(
    features: np.ndarray, targets: ValueTargets, *, folds: int = 5, seed: int = 0, **kw
) -> ValueMetrics:
    """Out-of-fold metrics: the prompts split into ``folds`` seeded groups, a head trained on
    the others predicts each group's prefixes (``train_head`` keywords in ``kw``). How a head
    of these settings does on problems it never saw, measured on the training split alone (the
    report split stays untouched for the final numbers)."""
    ids = sorted(set(targets.prompt_ids))
    if not 2 <= folds <= len(ids):
        raise ConfigError(f"--cv needs 2 <= folds <= prompts ({len(ids)}), got {folds}")
    perm = np.random.default_rng(seed).permutation(len(ids))
    pids = np.asarray(targets.prompt_ids)
    values = np.zeros(len(targets))
    for k in range(folds):
        held = np.isin(pids, [ids[j] for j in perm[k::folds]])
        r = train_head(
            features, targets, train_idx=np.flatnonzero(~held), seed=seed, log=None, **kw
        )
        values[held] = predict_values(r.head, features[held])
    return evaluate(values, targets)


def feature_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of training features (float64). Hidden states
    of real models have a few dimensions hundreds of times larger than the rest (Qwen2.5's
    final normed state among them); unscaled, those dimensions saturate the first layer and
    the head learns only the base rate. A dimension that is (nearly) constant gets scale 1."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    tiny = 1e-6 * max(float(sd.max(initial=0.0)), 1e-12)
    return mu, np.where(sd > tiny, sd, 1.0)


def fold_scale(head: ValueHead, mu: np.ndarray, sd: np.ndarray) -> None:
    """Fold the input standardization (h - mu) / sd into the first layer, so the head takes raw
    hidden states: W' = W / sd, b' = b - W' mu (exact up to float rounding)."""
    first = head.layers[0]
    w = np.array(first.weight, dtype=np.float64) / sd[None, :]
    b = np.array(first.bias, dtype=np.float64) - w @ mu
    first.weight = mx.array(w.astype(np.float32))
    first.bias = mx.array(b.astype(np.float32))
    mx.eval(head.parameters())


def predict_values(head: ValueHead, features: np.ndarray) -> np.ndarray:
    return np.array(head(mx.array(features)), dtype=np.float64)
