"""Exact output laws of the samplers on tabular toys, computed from their transition rules.

A ``WalkTree`` enumerates the token-level tree of a ``toy.TabularLM`` up to the horizon, with
V^ at internal nodes and tau at leaves (a leaf: EOS or the horizon). A *kernel* is what one
non-lazy step does at each node: for node n, ``up[n]`` is the probability of moving to its parent
(a forced move on a dead end included) and ``down[n]`` the probability that its parent moves to
n; ``stay[root]`` is the probability that the root draws only zero weights (the walk stays).
- ``exact_kernel``: the exact step (``Enumerate``; ``Rejection`` has the same law while it does
  not fall back, i.e. ``SampleStats.inexact_steps == 0``, see ``mlx_vgb.children``);
- ``self_normalized_kernel``: ``SelfNormalized(k)``, by enumerating the multisets of k draws.
The laws follow the samplers' rules, including the padding of ``mlx_vgb.vgb``:
- ``practical_law``: the first leaf the walk is absorbed at (one pad coin at a shallow leaf);
- ``lazy_law``: the lazy walk after T steps from the root, given that it is on a leaf, with
  the pad chain walked state by state; and P(leaf after T steps);
- ``forward_law``: ActionLevelRS, the forward chain, restarted on a dead end;
- ``stationary_law``: the lazy walk's stationary law over nodes (pad states count for their leaf).
- ``output_law``: any ``VGB`` / ``ActionLevelRS`` object's law, by its settings.
``vgb_law``, ``action_rs_law`` and ``lazy_vgb_law`` take (lm, verifier, horizon) directly.
Keep vocab_size ** horizon small (say <= 1e4 leaves).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .toy import TabularLM


class WalkTree:
    """Nodes in breadth-first order (a parent before its children): ``tokens``, ``parent``,
    ``depth``, ``leaf``, ``pi`` (pi_ref of the edge from the parent), ``v`` (V^ inside, tau at
    leaves), ``children``; ``max_depth`` = D. ``pad_leaves=True`` appends the explicit pad chain
    (pi_ref = 1, V^ = tau) under every leaf shallower than D (pad token -1)."""

    def __init__(
        self,
        lm: TabularLM,
        verifier,
        horizon: int,
        max_depth: int | None = None,
        pad_leaves: bool = False,
    ):
        self.max_depth = D = horizon if max_depth is None else max_depth
        eos = lm.eos_token_ids
        self.tokens: list[tuple[int, ...]] = [()]
        self.parent, self.depth, self.leaf = [-1], [0], [False]
        self.pi, self.v = [1.0], [float(verifier.value([()])[0])]
        self.children: list[list[int]] = [[]]
        self.end = [False]  # a complete response (EOS or horizon), padded or not
        i = 0
        while i < len(self.tokens):
            s = self.tokens[i]
            if not self.leaf[i]:
                if self.end[i]:  # pad chain: pi_ref = 1, V^ = tau
                    kids = [(s + (-1,), 1.0)]
                else:
                    p = lm.probs(s)
                    kids = [(s + (a,), float(q)) for a, q in enumerate(p) if q > 0]
                for y, q in kids:
                    real = tuple(t for t in y if t >= 0)
                    end = len(real) >= horizon or real[-1] in eos
                    self._add(y, real, i, q, end and (not pad_leaves or len(y) >= D), end, verifier)
            i += 1

    def _add(self, y, real, parent, q, leaf, end, verifier):
        if end and self.end[parent]:
            v = self.v[parent]  # tau, computed once
        else:
            v = float((verifier.tilt if end else verifier.value)([real])[0])
        self.children[parent].append(len(self.tokens))
        self.tokens.append(y)
        self.parent.append(parent)
        self.depth.append(self.depth[parent] + 1)
        self.leaf.append(leaf)
        self.end.append(end)
        self.pi.append(q)
        self.v.append(v)
        self.children.append([])

    def __len__(self) -> int:
        return len(self.tokens)

    def response(self, i: int) -> tuple[int, ...]:
        return tuple(t for t in self.tokens[i] if t >= 0)


def exact_kernel(tree: WalkTree, drift: float = 1.0, backtrack: bool = True):
    """(up, down, stay) of the exact step: parent lambda V^(s), child pi_ref V^(s.a)."""
    n = len(tree)
    up, down, stay = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        if tree.leaf[i]:
            up[i] = 1.0
            continue
        kids = tree.children[i]
        w = np.array([tree.pi[c] * tree.v[c] for c in kids])
        wp = drift * tree.v[i] if backtrack and i > 0 else 0.0
        tot = wp + w.sum()
        if tot <= 0:
            if i == 0:
                stay[0] = 1.0
            else:
                up[i] = 1.0  # forced move up (or a restart for ActionLevelRS)
            continue
        up[i] = wp / tot
        down[kids] = w / tot
    return up, down, stay


def self_normalized_kernel(tree: WalkTree, k: int, drift: float = 1.0, backtrack: bool = True):
    """(up, down, stay) of ``SelfNormalized(k)``: k i.i.d. pi_ref children, the parent weighs
    k lambda V^(s); every multiset of draws enumerated with its multinomial probability."""
    n = len(tree)
    up, down, stay = np.zeros(n), np.zeros(n), np.zeros(n)
    logfact = [math.lgamma(j + 1) for j in range(k + 1)]
    for i in range(n):
        if tree.leaf[i]:
            up[i] = 1.0
            continue
        kids = tree.children[i]
        pi = np.array([tree.pi[c] for c in kids])
        pi = pi / pi.sum()
        v = np.array([tree.v[c] for c in kids])
        wp = k * drift * tree.v[i] if backtrack and i > 0 else 0.0
        none = 0.0
        p_kid = np.zeros(len(kids))
        p_up = 0.0
        with np.errstate(divide="ignore"):
            logpi = np.log(pi)
        for combo in itertools.combinations_with_replacement(range(len(kids)), k):
            cnt = np.bincount(combo, minlength=len(kids))
            lp = logfact[k] - sum(logfact[c] for c in cnt) + float(np.dot(cnt, logpi))
            p = math.exp(lp)
            tot = wp + float(np.dot(cnt, v))
            if tot <= 0:
                none += p
                continue
            p_up += p * wp / tot
            p_kid += p * cnt * v / tot
        if i == 0:
            stay[0] = none
        else:
            p_up += none  # forced move up
        up[i] = p_up
        down[kids] = p_kid
    return up, down, stay


def pad_coin(depth: int, max_depth: int, drift: float) -> float:
    """P(the pad chain under a leaf at ``depth`` reaches the padded leaf before the parent)."""
    m = max(0, max_depth - depth)
    return 1.0 / sum(drift**j for j in range(m + 1))


def practical_law(tree: WalkTree, kernel, drift: float = 1.0, pad: bool = True) -> dict:
    """Law of the first leaf the walk is absorbed at, from the root. h[n] = P(the walk from n hits
    n's parent before absorption): h = p_up / (1 - sum_c p_c h_c) inside, 0 at a leaf of depth D,
    1 - (pad coin) at a shallow leaf; the absorbed law is the chain q(c|s) ∝ p_c (1 - h_c)."""
    up, down, _ = kernel
    n = len(tree)
    h = np.zeros(n)
    for i in range(n - 1, 0, -1):
        if tree.leaf[i]:
            h[i] = 1.0 - pad_coin(tree.depth[i], tree.max_depth, drift) if pad else 0.0
            continue
        kids = tree.children[i]
        back = float(np.dot(down[kids], h[kids]))
        h[i] = up[i] / (1 - back) if back < 1 - 1e-15 else 1.0
    prob = np.zeros(n)
    prob[0] = 1.0
    out: dict = {}
    for i in range(n):
        if prob[i] == 0:
            continue
        if tree.leaf[i]:
            y = tree.response(i)
            out[y] = out.get(y, 0.0) + prob[i]
            continue
        kids = tree.children[i]
        q = down[kids] * (1 - h[kids])
        if q.sum() > 0:
            prob[kids] = prob[i] * q / q.sum()
    z = sum(out.values())
    return {y: p / z for y, p in out.items() if p > 0}


def forward_law(tree: WalkTree, kernel) -> dict:
    """ActionLevelRS: the forward chain ``down`` from the root, restarted on a dead end (so the
    law is the chain's law on leaves, renormalized). ``kernel`` built with backtrack=False."""
    _, down, _ = kernel
    prob = np.zeros(len(tree))
    prob[0] = 1.0
    out: dict = {}
    for i in range(len(tree)):
        if prob[i] == 0:
            continue
        if tree.leaf[i]:
            y = tree.response(i)
            out[y] = out.get(y, 0.0) + prob[i]
            continue
        kids = tree.children[i]
        prob[kids] = prob[i] * down[kids]
    z = sum(out.values())
    return {y: p / z for y, p in out.items() if p > 0}


class _LazyChain:
    """The lazy walk's states (tree nodes, then pad states (leaf, j), j = 1..m) and moves."""

    def __init__(self, tree: WalkTree, kernel, drift: float, pad: bool):
        up, down, stay = kernel
        n = len(tree)
        src, dst, p = [], [], []
        self.out_state: list[int] = []  # the state that outputs leaf i
        self.out_leaf: list[int] = []
        n_states = n
        a = drift / (1 + drift)
        for i in range(n):
            if tree.leaf[i]:
                m = max(0, tree.max_depth - tree.depth[i]) if pad else 0
                if m == 0:
                    src.append(i), dst.append(tree.parent[i]), p.append(1.0)
                    self.out_state.append(i), self.out_leaf.append(i)
                    continue
                chain = [i] + list(range(n_states, n_states + m))
                n_states += m
                src.append(i), dst.append(tree.parent[i]), p.append(a)
                for j in range(m):
                    src.append(chain[j]), dst.append(chain[j + 1]), p.append(1 - a)
                    if j + 1 < m:
                        src.append(chain[j + 1]), dst.append(chain[j]), p.append(a)
                src.append(chain[m]), dst.append(chain[m - 1]), p.append(1.0)
                self.out_state.append(chain[m]), self.out_leaf.append(i)
                continue
            if i > 0 and up[i] > 0:
                src.append(i), dst.append(tree.parent[i]), p.append(up[i])
            for c in tree.children[i]:
                if down[c] > 0:
                    src.append(i), dst.append(c), p.append(down[c])
            if stay[i] > 0:
                src.append(i), dst.append(i), p.append(stay[i])
        self.n = n_states
        self.src, self.dst, self.p = np.array(src), np.array(dst), np.array(p)
        self.tree = tree

    def step(self, m: np.ndarray) -> np.ndarray:
        moved = np.bincount(self.dst, weights=m[self.src] * self.p, minlength=self.n)
        return 0.5 * m + 0.5 * moved


def lazy_law(
    tree: WalkTree, kernel, steps: int, drift: float = 1.0, pad: bool = True
) -> tuple[dict, float]:
    """Law of the lazy walk after ``steps`` steps from the root given that it is on a leaf, and
    P(on a leaf). ``VGB(lazy=True, steps_per_try=T)`` outputs this law (a try that ends inside
    the tree restarts); its tries per response are about 1 / P(leaf)."""
    chain = _LazyChain(tree, kernel, drift, pad)
    m = np.zeros(chain.n)
    m[0] = 1.0
    for _ in range(steps):
        m = chain.step(m)
    return _leaf_law(chain, m)


def lazy_laws(
    tree: WalkTree, kernel, steps: list[int], drift: float = 1.0, pad: bool = True
) -> dict[int, tuple[dict, float]]:
    """``lazy_law`` at several T in one pass."""
    chain = _LazyChain(tree, kernel, drift, pad)
    m = np.zeros(chain.n)
    m[0] = 1.0
    out, t = {}, 0
    for T in sorted(steps):
        while t < T:
            m = chain.step(m)
            t += 1
        out[T] = _leaf_law(chain, m)
    return out


def _leaf_law(chain: _LazyChain, m: np.ndarray) -> tuple[dict, float]:
    law: dict = {}
    for s, i in zip(chain.out_state, chain.out_leaf):
        if m[s] > 0:
            y = chain.tree.response(i)
            law[y] = law.get(y, 0.0) + m[s]
    p_leaf = sum(law.values())
    return ({y: p / p_leaf for y, p in law.items()} if p_leaf > 0 else {}), float(p_leaf)


def stationary_law(tree: WalkTree, drift: float = 1.0, pad: bool = True) -> dict:
    """Stationary law of the lazy exact walk over nodes (token tuples): mass proportional to the
    conductances c(y) = pi_ref(y) V^(y) lambda^-depth(y) of the edges at a node; the pad chain
    under a shallow leaf y continues with c = pi_ref(y) tau(y) lambda^-(depth), its mass counted
    for y."""
    n = len(tree)
    pref = np.zeros(n)
    pref[0] = 1.0
    mass: dict = {}
    for i in range(1, n):
        pref[i] = pref[tree.parent[i]] * tree.pi[i]
        c = pref[i] * tree.v[i] * drift ** -tree.depth[i]
        y, py = tree.response(i), tree.response(tree.parent[i])
        mass[py] = mass.get(py, 0.0) + c
        mass[y] = mass.get(y, 0.0) + c
        if tree.leaf[i] and pad:  # both ends of every pad edge count for y
            for d in range(tree.depth[i] + 1, tree.max_depth + 1):
                mass[y] += 2 * pref[i] * tree.v[i] * drift**-d
    z = sum(mass.values())
    return {y: w / z for y, w in mass.items() if w > 0}


def output_law(tree: WalkTree, sampler) -> dict:
    """The exact output law of a ``VGB`` or ``ActionLevelRS`` object (token actions, a choice
    rule of ``mlx_vgb.children``), by its transition rule."""
    from .children import Enumerate, Rejection, SelfNormalized
    from .vgb import VGB, default_steps_per_try

    drift = getattr(sampler, "drift", 1.0)
    backtrack = isinstance(sampler, VGB)
    ch = sampler.choice
    if isinstance(ch, (Enumerate, Rejection)):
        kern = exact_kernel(tree, drift, backtrack)
    elif isinstance(ch, SelfNormalized):
        kern = self_normalized_kernel(tree, ch.k, drift, backtrack)
    else:  # pragma: no cover
        raise TypeError(f"no law for choice {ch!r}")
    if not backtrack:
        return forward_law(tree, kern)
    if not sampler.lazy:
        return practical_law(tree, kern, drift, sampler.pad)
    T = sampler.steps_per_try or default_steps_per_try(tree.max_depth, drift)
    return lazy_law(tree, kern, T, drift, sampler.pad)[0]


def vgb_law(lm: TabularLM, verifier, horizon: int, drift: float = 1.0) -> dict:
    """Output law of the practical walk with an exact step (``VGB(choice=Enumerate())``)."""
    tree = WalkTree(lm, verifier, horizon)
    return practical_law(tree, exact_kernel(tree, drift), drift)


def action_rs_law(lm: TabularLM, verifier, horizon: int) -> dict:
    """Output law of ``ActionLevelRS`` with an exact step."""
    tree = WalkTree(lm, verifier, horizon)
    return forward_law(tree, exact_kernel(tree, backtrack=False))


def lazy_vgb_law(
    lm: TabularLM, verifier, horizon: int, steps: int, drift: float = 1.0
) -> tuple[dict, float]:
    """Output law of ``VGB(lazy=True, steps_per_try=steps)`` with an exact step, and P(leaf)."""
    tree = WalkTree(lm, verifier, horizon)
    return lazy_law(tree, exact_kernel(tree, drift), steps, drift)
