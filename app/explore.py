"""The explored tree of a run and the inspection of one step (plain data and HTML; no Gradio).

``ExploredTree`` is built from the stream (``Append`` / ``Backtrack`` events: the path and the
visits) and, where the sampler walks (VGB, ActionLevelRS), from the per-step traces
(``mlx_vgb.trace.StepTrace``: V^ of the node and of every option it weighed).
"""

from __future__ import annotations

import html
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_TREE_NODES = 20_000  # nodes kept per run (the rest are counted, not stored)
MAX_SHOWN_NODES = 160  # nodes drawn in the tree view (most visited first, the path always)
MAX_TRACES = 5_000  # step traces kept per run (the latest)

Tokens = tuple[int, ...]


@dataclass
class TreeNode:
    tokens: Tokens
    parent: Tokens | None
    visits: int = 0  # times the walk arrived here
    ups: int = 0  # moves from here to the parent (backtracks)
    log_value: float | None = None  # log V^ (log tau at a leaf), from the traces
    children: list[Tokens] = field(default_factory=list)


class ExploredTree:
    """Prefixes the run touched (walk nodes), their visits, V^ and the current path."""

    def __init__(self):
        root: Tokens = ()
        self.nodes: dict[Tokens, TreeNode] = {root: TreeNode(root, None, visits=1)}
        self.current: Tokens = root
        self.dropped = 0
        self.traces: deque = deque(maxlen=MAX_TRACES)

    def _node(self, tokens: Tokens, parent: Tokens | None) -> TreeNode | None:
        n = self.nodes.get(tokens)
        if n is None:
            if len(self.nodes) >= MAX_TREE_NODES:
                self.dropped += 1
                return None
            n = self.nodes[tokens] = TreeNode(tokens, parent)
            if parent in self.nodes:
                self.nodes[parent].children.append(tokens)
        return n

    def on_append(self, tokens: Sequence[int]) -> None:
        new = self.current + tuple(int(t) for t in tokens)
        n = self._node(new, self.current)
        if n is not None:
            n.visits += 1
        self.current = new

    def on_backtrack(self, n_tokens: int) -> None:
        old = self.nodes.get(self.current)
        if old is not None:
            old.ups += 1
        self.current = self.current[: len(self.current) - n_tokens]
        n = self.nodes.get(self.current)
        if n is not None:
            n.visits += 1

    def on_trace(self, st) -> None:
        """A ``StepTrace``: V^ of the node and of each option (options become nodes)."""
        self.traces.append(st)
        here = self.nodes.get(tuple(st.node))
        if here is not None and st.log_value is not None:
            here.log_value = st.log_value
        for o in st.options:
            if o.up:
                continue
            n = self._node(tuple(o.tokens), tuple(st.node))
            if n is not None and o.log_value is not None:
                n.log_value = o.log_value

    def path(self) -> list[Tokens]:
        """Root to the current node (the walk nodes on the way)."""
        out, t = [], self.current
        while t is not None and t in self.nodes:
            out.append(t)
            t = self.nodes[t].parent
        return out[::-1]

    def trace_at(self, step: int):
        """The kept trace of ``step`` (the nearest kept one at or before it), or None."""
        best = None
        for st in self.traces:
            if st.step <= step:
                best = st
            else:
                break
        return best


def _fmt_value(lv: float | None) -> str:
    if lv is None:
        return "—"
    if lv == -math.inf:
        return "0"
    v = math.exp(lv)
    return f"{v:.3g}" if v >= 1e-3 else f"e^{lv:.1f}"


def _label(decode: Callable, parent: Tokens | None, tokens: Tokens) -> str:
    if parent is None:
        return "(root)"
    try:
        s = decode(list(tokens[len(parent) :]))
    except Exception:  # noqa: BLE001 - a label is best effort
        s = str(tokens[len(parent) :])
    return _visible(s)


def _visible(s: str) -> str:
    """A token's text as shown: escapes for newlines and tabs, ␣ for a blank one."""
    r = repr(s)[1:-1]
    return "␣" * len(r) if r and not r.strip() else r or "∅"


def tree_html(
    tree: ExploredTree, decode: Callable, label: str = "run", final: Tokens | None = None
) -> str:
    """The explored tree as nested lists: each node's action text, visits, V^ and backtracks;
    the path to the current (or final) node in bold. At most ``MAX_SHOWN_NODES`` nodes: the
    path, then the most visited."""
    end = final if final is not None and final in tree.nodes else tree.current
    on_path, t = set(), end
    while t is not None and t in tree.nodes:
        on_path.add(t)
        t = tree.nodes[t].parent
    ranked = sorted(
        tree.nodes.values(), key=lambda n: (-(n.tokens in on_path), -n.visits, len(n.tokens))
    )
    shown = set()
    for n in ranked:
        if len(shown) >= MAX_SHOWN_NODES:
            break
        t = n.tokens  # keep every shown node's ancestors so the tree stays connected
        while t is not None and t not in shown and t in tree.nodes:
            shown.add(t)
            t = tree.nodes[t].parent

    def node_html(t: Tokens, depth: int) -> str:
        n = tree.nodes[t]
        cls = ["vgb-node"]
        if t in on_path:
            cls.append("vgb-onpath")
        if n.ups:
            cls.append("vgb-backtracked")
        if n.visits == 0:
            cls.append("vgb-unvisited")
        head = (
            f'<span class="{" ".join(cls)}" data-visits="{n.visits}" data-ups="{n.ups}" '
            f'data-depth="{depth}" title="{len(t)} tokens">'
            f"<code>{html.escape(_label(decode, n.parent, t))}</code> "
            f'<span class="vgb-meta">visits {n.visits} · V^ {_fmt_value(n.log_value)}'
            + (f" · <b>{n.ups}↑</b>" if n.ups else "")
            + "</span></span>"
        )
        kids = [c for c in n.children if c in shown]
        hidden = len(n.children) - len(kids)
        kids.sort(key=lambda c: (-(c in on_path), -tree.nodes[c].visits))
        inner = "".join(f"<li>{node_html(c, depth + 1)}</li>" for c in kids)
        if hidden:
            inner += f'<li class="vgb-more">… {hidden} more</li>'
        return head + (f"<ul>{inner}</ul>" if inner else "")

    extra = f" ({len(tree.nodes) - len(shown)} not shown)" if len(tree.nodes) > len(shown) else ""
    if tree.dropped:
        extra += f"; {tree.dropped} beyond the {MAX_TREE_NODES}-node store"
    return (
        f'<div class="vgb-tree" data-run="{html.escape(label)}" '
        f'data-nodes="{len(tree.nodes)}"><div class="vgb-tree-caption">explored tree of '
        f"{html.escape(label)}: {len(tree.nodes)} prefixes{extra}; bold = the path taken, "
        f"n↑ = backtracks from a node</div><ul><li>{node_html((), 0)}</li></ul></div>"
    )


def step_html(tree: ExploredTree, decode: Callable, step: int | None, label: str = "run") -> str:
    """One step: the node, V^ of it and of each option, the weights (as probabilities of the
    step's rule) and the move drawn."""
    if not tree.traces:
        return (
            f'<div class="vgb-step" data-run="{html.escape(label)}">no step traces for '
            f"{html.escape(label)} (the pool samplers do not walk; events only)</div>"
        )
    if step is None:
        st = tree.traces[-1]
    else:
        st = tree.trace_at(int(step)) or tree.traces[0]
    here = repr(_safe_decode(decode, st.node))[1:-1][-80:] or "(root)"
    # duplicates (a rule may draw one child several times) are merged, with a count
    merged: dict = {}
    for o in st.options:
        key = ("up",) if o.up else tuple(o.tokens)
        if key in merged:
            merged[key][1] += 1
        else:
            merged[key] = [o, 1]
    ws = [o.log_weight for o, _ in merged.values()]
    finite = [w for w in ws if w > -math.inf]
    top = max(finite) if finite else 0.0
    z = sum(math.exp(w - top) * c for (o, c), w in zip(merged.values(), ws) if w > -math.inf)
    rows = []
    for (o, c), w in zip(merged.values(), ws):
        what = (
            "↑ parent"
            if o.up
            else html.escape(_visible(_safe_decode(decode, o.tokens[len(st.node) :])))
        )
        p = math.exp(w - top) * c / z if z > 0 and w > -math.inf else 0.0
        drawn = st.target is not None and (
            (o.up and st.move == "parent") or (not o.up and tuple(o.tokens) == st.target)
        )
        rows.append(
            f'<tr class="{"vgb-drawn" if drawn else ""}"><td><code>{what}</code></td>'
            f"<td>{c}</td><td>{_fmt_value(o.log_value)}</td><td>{p:.3f}</td>"
            f"<td>{'◀ drawn' if drawn else ''}</td></tr>"
        )
    move = {
        "child": "moved down",
        "parent": "moved up (backtrack)",
        "stay": "stayed",
        "restart": "restarted from the root",
    }.get(st.move, st.move)
    note = (
        "Rejection: options are proposals, accepted with probability V^/B in draw order"
        if st.rule == "Rejection"
        else "weights: V^ of each candidate, K·λ·V^ for the parent"
        if st.rule == "SelfNormalized"
        else "weights: π_ref·V^ of each child, λ·V^ for the parent"
    )
    return (
        f'<div class="vgb-step" data-run="{html.escape(label)}" data-step="{st.step}" '
        f'data-move="{st.move}"><div><b>step {st.step}</b> at depth {st.depth}, node '
        f"<code>…{html.escape(here)}</code>, V^ = {_fmt_value(st.log_value)}: "
        f"<b>{move}</b> ({html.escape(st.rule)} rule)</div>"
        f'<table class="vgb-options"><tr><th>option</th><th>draws</th><th>V^</th>'
        f"<th>share of weight</th><th></th></tr>{''.join(rows)}</table>"
        f'<div class="vgb-note">{note}</div></div>'
    )


def _safe_decode(decode: Callable, tokens) -> str:
    try:
        return decode(list(tokens))
    except Exception:  # noqa: BLE001
        return str(tuple(tokens))
