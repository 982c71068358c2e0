"""What the web app draws, as plain data and HTML strings (no Gradio here, so it is testable).

- ``WalkView`` follows the stream of one run: the text with erased spans kept in place (struck
  through) instead of vanishing, the depth over steps (a backtrack is a drop), and the stats.
- ``text_html`` / ``depth_svg`` / ``stats_html`` turn a view into HTML for the page.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from ..prefixes import common_prefix_len

MAX_ERASED_CHARS = 160  # one struck-through span shows at most this many characters
MAX_PLOT_POINTS = 1200  # the depth plot keeps the min and max of each step bucket beyond this


@dataclass
class Segment:
    text: str
    erased: bool = False


@dataclass
class WalkView:
    """The state of one run as the page shows it. ``update(resp)`` takes one stream response."""

    label: str = "vgb"
    segments: list[Segment] = field(default_factory=list)
    points: list[tuple[int, int, bool]] = field(default_factory=list)  # (step, depth, backtrack)
    text: str = ""  # the current clean text
    events: int = 0
    appends: int = 0
    backtrack_events: int = 0
    erased_chars: int = 0
    step: int = 0
    depth: int = 0
    stats: object | None = None  # mlx_vgb.results.SampleStats snapshot
    tokens_per_s: float = 0.0
    finish_reason: str | None = None
    reached_leaf: bool | None = None
    tilt: float | None = None
    done: bool = False
    cancelled: bool = False
    error: str | None = None

    def update(self, resp) -> None:
        kind = type(resp.event).__name__
        self.events += 1
        new = resp.text if resp.text is not None else ""
        if kind == "Backtrack":
            self.backtrack_events += 1
            self._set_text(new, erase=True)
        else:
            if kind == "Append":
                self.appends += 1
            self._set_text(new, erase=False)
        self.step = int(getattr(resp, "step", self.step) or 0)
        self.depth = int(getattr(resp, "depth", self.depth) or 0)
        if kind != "Done":
            self.points.append((self.step, self.depth, kind == "Backtrack"))
        self.stats = getattr(resp, "stats", None)
        self.tokens_per_s = float(getattr(resp, "tokens_per_s", 0.0) or 0.0)
        if kind == "Done":
            self.done = True
            self.finish_reason = resp.finish_reason
            result = getattr(resp, "result", None)
            if result is not None:
                self.reached_leaf = bool(result.reached_leaf)
                self.tilt = result.tilt
                self.stats = result.stats

    def _set_text(self, new: str, erase: bool) -> None:
        """Make the kept (not erased) characters equal ``new``: characters past the common prefix
        are struck through on a backtrack, or replaced silently on an append (a token can change
        how the previous bytes decode)."""
        old = self.text
        n = common_prefix_len(old, new)
        drop = len(old) - n
        if drop:
            self._drop_kept_tail(drop, erase)
        if len(new) > n:
            self._append(new[n:], erased=False)
        self.text = new

    def _drop_kept_tail(self, n: int, erase: bool) -> None:
        i = len(self.segments) - 1
        while n > 0 and i >= 0:
            seg = self.segments[i]
            if seg.erased:
                i -= 1
                continue
            take = min(n, len(seg.text))
            head, tail = seg.text[: len(seg.text) - take], seg.text[len(seg.text) - take:]
            n -= take
            repl = [Segment(head)] if head else []
            if erase:
                repl.append(Segment(tail, erased=True))
                self.erased_chars += take
            self.segments[i: i + 1] = repl
            i -= 1
        self._merge()

    def _append(self, text: str, erased: bool) -> None:
        self.segments.append(Segment(text, erased))
        self._merge()

    def _merge(self) -> None:
        out: list[Segment] = []
        for s in self.segments:
            if out and out[-1].erased == s.erased:
                out[-1] = Segment(out[-1].text + s.text, s.erased)
            else:
                out.append(s)
        self.segments = out


def _short(text: str, limit: int = MAX_ERASED_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + f" … [{len(text) - 2 * half} more] … " + text[-half:]


def text_html(view: WalkView, show_erased: bool = True) -> str:
    """The text of a run: kept text as is, erased spans struck through (``<del>``)."""
    parts = []
    for seg in view.segments:
        if seg.erased:
            if show_erased:
                parts.append(f'<del class="vgb-erased" title="erased by a backtrack ('
                             f'{len(seg.text)} chars)">{html.escape(_short(seg.text))}</del>')
        else:
            parts.append(f'<span class="vgb-kept">{html.escape(seg.text)}</span>')
    cursor = "" if view.done else '<span class="vgb-cursor">▍</span>'
    body = "".join(parts) or '<span class="vgb-empty">(no text yet)</span>'
    return (f'<div class="vgb-text" data-run="{html.escape(view.label)}" '
            f'data-done="{str(view.done).lower()}">{body}{cursor}</div>')


def plot_points(points: list[tuple[int, int, bool]], limit: int = MAX_PLOT_POINTS
                ) -> list[tuple[int, int, bool]]:
    """At most about ``limit`` points: beyond that, the first, lowest and highest point of each
    bucket of steps (so drops stay visible)."""
    if len(points) <= limit:
        return list(points)
    per = math.ceil(len(points) / (limit / 3))
    out = []
    for i in range(0, len(points), per):
        b = points[i: i + per]
        keep = {0, min(range(len(b)), key=lambda j: b[j][1]), max(range(len(b)),
                                                                   key=lambda j: b[j][1])}
        out.extend(b[j] for j in sorted(keep))
    return out


def depth_svg(view: WalkView, width: int = 560, height: int = 180) -> str:
    """Depth over steps as an inline SVG: a step line; backtracks are the drops (red dots)."""
    pts = plot_points([(0, 0, False)] + view.points)
    max_step = max(1, max(p[0] for p in pts))
    max_depth = max(1, max(p[1] for p in pts))
    ml, mr, mt, mb = 36, 10, 10, 24
    w, h = width - ml - mr, height - mt - mb

    def xy(step, depth):
        return ml + w * step / max_step, mt + h * (1 - depth / max_depth)

    path = []
    prev = None
    for step, depth, _ in pts:
        x, y = xy(step, depth)
        if prev is None:
            path.append(f"M{x:.1f},{y:.1f}")
        else:
            path.append(f"H{x:.1f}V{y:.1f}")
        prev = (x, y)
    drops = [xy(s, d) for s, d, back in pts if back]
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" class="vgb-drop"/>'
                   for x, y in drops[-400:])
    axis = (f'<line x1="{ml}" y1="{mt + h}" x2="{ml + w}" y2="{mt + h}" stroke="#888"/>'
            f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + h}" stroke="#888"/>'
            f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end" font-size="10">{max_depth}</text>'
            f'<text x="{ml - 4}" y="{mt + h}" text-anchor="end" font-size="10">0</text>'
            f'<text x="{ml + w}" y="{height - 6}" text-anchor="end" font-size="10">'
            f'step {max_step}</text>'
            f'<text x="{ml}" y="{height - 6}" font-size="10">depth over steps '
            f'({view.backtrack_events} backtracks)</text>')
    return (f'<svg class="vgb-depth" data-run="{html.escape(view.label)}" '
            f'data-points="{len(view.points)}" data-backtracks="{view.backtrack_events}" '
            f'viewBox="0 0 {width} {height}" width="100%" '
            f'xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="depth over steps for {html.escape(view.label)}">{axis}'
            f'<path d="{" ".join(path)}" fill="none" stroke="#2f6fde" stroke-width="1.4"/>'
            f'{dots}</svg>')


def stats_rows(view: WalkView) -> list[tuple[str, str]]:
    s = view.stats
    get = (lambda k: getattr(s, k, 0)) if s is not None else (lambda k: 0)
    if view.error:
        status = "error"
    elif view.cancelled:
        status = "cancelled"
    elif view.done:
        status = f"done ({view.finish_reason})"
    else:
        status = "running"
    leaf = "—" if view.reached_leaf is None else ("yes" if view.reached_leaf else "no")
    wall = float(get("wall_s") or 0.0)
    rows = [
        ("status", status),
        ("steps", str(get("steps"))),
        ("backtracks", str(get("backtracks"))),
        ("restarts", str(get("restarts"))),
        ("depth (max)", f"{view.depth} ({get('max_depth')})"),
        ("forward tokens", str(get("forward_tokens"))),
        ("verifier calls", f"{get('verifier_calls')} ({get('verifier_evals')} values)"),
        ("tokens/s", f"{view.tokens_per_s:.1f}"),
        ("reached leaf", leaf),
        ("tilt τ", "—" if view.tilt is None else f"{view.tilt:.3g}"),
    ]
    if wall:
        rows.append(("wall time", f"{wall:.2f} s"))
    return rows


def stats_html(view: WalkView) -> str:
    rows = "".join(f'<tr><th>{html.escape(k)}</th><td data-stat="{html.escape(k)}">'
                   f'{html.escape(v)}</td></tr>' for k, v in stats_rows(view))
    return (f'<table class="vgb-stats" data-run="{html.escape(view.label)}">'
            f'<caption>{html.escape(view.label)}</caption>{rows}</table>')


def error_html(message: str) -> str:
    return f'<div class="vgb-error" role="alert">⚠ {html.escape(message)}</div>'


CSS = """
.vgb-text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 14px;
  line-height: 1.5; min-height: 4em; padding: 8px; border: 1px solid #ddd; border-radius: 6px; }
.vgb-erased { color: #c0392b; text-decoration: line-through; opacity: 0.75;
  background: #fdecea; }
.vgb-panel-title { font-weight: 600; font-size: 16px; }
.vgb-cursor { color: #2f6fde; }
.vgb-empty { color: #999; }
.vgb-drop { fill: #c0392b; }
.vgb-stats { font-size: 13px; border-collapse: collapse; width: 100%; margin: 0 !important; }
.vgb-stats th, .vgb-stats td { border: none !important; border-bottom: 1px solid #eee !important;
  padding: 2px 6px !important; line-height: 1.3; }
.vgb-stats th { text-align: left; font-weight: 500; color: #555; }
.vgb-stats td { text-align: right; font-family: ui-monospace, monospace; }
.vgb-stats caption { font-weight: 600; text-align: left; }
.vgb-error { color: #8a1c12; background: #fdecea; border: 1px solid #e6b0aa; padding: 8px;
  border-radius: 6px; }
"""
