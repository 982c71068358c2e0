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
from .explore import ExploredTree

MAX_ERASED_CHARS = 160  # one struck-through span shows at most this many characters
MAX_PLOT_POINTS = 1200  # the depth plot keeps the min and max of each step bucket beyond this
MAX_LOGGED_EVENTS = 20_000  # events kept for the JSON export of a run
POOLS = ("outcome-rs", "bon", "block-bon", "block-rs")  # their backtracks discard, not move up
SERIES_COLORS = ("#2f6fde", "#e67e22", "#27ae60", "#8e44ad")


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
    verifier: str = "none"  # the verifier spec every run is scored by (the verdict)
    busy_s: float = 0.0  # this run's own time on the model worker (compare mode: timed apart)
    output_tokens: int = 0
    tree: ExploredTree = field(default_factory=ExploredTree)
    log: list[dict] = field(default_factory=list)  # the events, for the JSON export
    final_tokens: tuple | None = None
    decode: object = field(default=None, repr=False)  # token ids -> text (the tree's labels)

    def update(self, resp) -> None:
        kind = type(resp.event).__name__
        self.events += 1
        ev = resp.event
        if kind == "Append":
            self.tree.on_append(ev.tokens)
        elif kind == "Backtrack":
            self.tree.on_backtrack(ev.n_tokens)
        if kind != "Done" and len(self.log) < MAX_LOGGED_EVENTS:
            self.log.append(
                {
                    "event": kind.lower(),
                    "step": int(resp.step),
                    "depth": int(resp.depth),
                    "erased": resp.erased or "",
                    "appended": resp.appended or "",
                }
                if hasattr(resp, "erased")
                else {"event": kind.lower()}
            )
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
                self.final_tokens = tuple(result.tokens)
                self.output_tokens = len(result.tokens)

    def add_trace(self, st) -> None:
        """A per-step trace of the walk (``mlx_vgb.trace.StepTrace``)."""
        self.tree.on_trace(st)

    def verdict(self) -> tuple[str, str]:
        """(code, words): passes / fails / unfinished / complete (no verifier) / running /
        cancelled / error -- scored by the selected verifier whatever the sampler."""
        if self.error:
            return "error", "error"
        if self.cancelled:
            return "cancelled", "cancelled"
        if not self.done:
            return "running", "running"
        if not self.reached_leaf:
            return "unfinished", f"unfinished ({self.finish_reason})"
        if self.verifier in ("none", ""):
            return "complete", "complete (no verifier)"
        if self.finish_reason == "rejected" or not self.tilt:
            return (
                "fails",
                "fails (τ = 0)" if not self.tilt else f"fails (rejected, τ = {self.tilt:.3g})",
            )
        return "passes", f"passes (τ = {self.tilt:.3g})"

    @property
    def own_tokens_per_s(self) -> float:
        return self.output_tokens / self.busy_s if self.busy_s > 0 else 0.0

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
            head, tail = seg.text[: len(seg.text) - take], seg.text[len(seg.text) - take :]
            n -= take
            repl = [Segment(head)] if head else []
            if erase:
                repl.append(Segment(tail, erased=True))
                self.erased_chars += take
            self.segments[i : i + 1] = repl
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
                parts.append(
                    f'<del class="vgb-erased" title="erased by a backtrack ('
                    f'{len(seg.text)} chars)">{html.escape(_short(seg.text))}</del>'
                )
        else:
            parts.append(f'<span class="vgb-kept">{html.escape(seg.text)}</span>')
    cursor = "" if view.done else '<span class="vgb-cursor">▍</span>'
    body = "".join(parts) or '<span class="vgb-empty">(no text yet)</span>'
    return (
        f'<div class="vgb-text" data-run="{html.escape(view.label)}" '
        f'data-done="{str(view.done).lower()}">{body}{cursor}</div>'
    )


def plot_points(
    points: list[tuple[int, int, bool]], limit: int = MAX_PLOT_POINTS
) -> list[tuple[int, int, bool]]:
    """At most about ``limit`` points: beyond that, the first, lowest and highest point of each
    bucket of steps (so drops stay visible)."""
    if len(points) <= limit:
        return list(points)
    per = math.ceil(len(points) / (limit / 3))
    out = []
    for i in range(0, len(points), per):
        b = points[i : i + per]
        keep = {
            0,
            min(range(len(b)), key=lambda j: b[j][1]),
            max(range(len(b)), key=lambda j: b[j][1]),
        }
        out.extend(b[j] for j in sorted(keep))
    return out


def depth_svg(views, width: int = 760, height: int = 240) -> str:
    """Depth over steps of one or several runs on one axis (one x scale): a step line per run,
    red dots at the drops (backtracks); hover a dot or the line for the step."""
    if isinstance(views, WalkView):
        views = [views]
    series = [plot_points([(0, 0, False)] + v.points) for v in views]
    max_step = max(1, max(p[0] for pts in series for p in pts))
    max_depth = max(1, max(p[1] for pts in series for p in pts))
    ml, mr, mt, mb = 40, 12, 12, 30
    w, h = width - ml - mr, height - mt - mb

    def xy(step, depth):
        return ml + w * step / max_step, mt + h * (1 - depth / max_depth)

    body, legend = [], []
    for k, (v, pts) in enumerate(zip(views, series)):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        path = []
        for i, (step, depth, _) in enumerate(pts):
            x, y = xy(step, depth)
            path.append(f"M{x:.1f},{y:.1f}" if i == 0 else f"H{x:.1f}V{y:.1f}")
        dots = "".join(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" class="vgb-drop" data-step="{st}">'
            f"<title>{html.escape(v.label)}: step {st}, back to depth {d} (click: inspect)"
            "</title></circle>"
            for st, d, back in pts[-2000:]
            if back
            for x, y in [xy(st, d)]
        )
        body.append(
            f'<g class="vgb-series" data-run="{html.escape(v.label)}" '
            f'data-points="{len(v.points)}" data-backtracks="{v.backtrack_events}">'
            f'<path d="{" ".join(path)}" fill="none" stroke="{color}" '
            f'stroke-width="1.6"><title>{html.escape(v.label)}</title></path>{dots}</g>'
        )
        legend.append(
            f'<tspan fill="{color}">■ {html.escape(v.label)} '
            f"({v.backtrack_events} moves up)</tspan> "
        )
    ticks = "".join(
        f'<text x="{xy(t, 0)[0]:.1f}" y="{mt + h + 14}" text-anchor="middle" font-size="11">'
        f"{t}</text>"
        for t in _ticks(max_step)
    )
    dticks = "".join(
        f'<text x="{ml - 6}" y="{xy(0, d)[1] + 4:.1f}" text-anchor="end" font-size="11">{d}</text>'
        for d in _ticks(max_depth)
    )
    axis = (
        f'<line x1="{ml}" y1="{mt + h}" x2="{ml + w}" y2="{mt + h}" stroke="#888"/>'
        f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + h}" stroke="#888"/>{ticks}{dticks}'
        f'<text x="{ml}" y="{height - 4}" font-size="12">depth (actions) over steps: '
        f"{''.join(legend)}</text>"
    )
    labels = ", ".join(v.label for v in views)
    first = views[0]
    return (
        f'<svg class="vgb-depth" data-run="{html.escape(first.label)}" '
        f'data-points="{len(first.points)}" data-backtracks="{first.backtrack_events}" '
        f'data-series="{len(views)}" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="depth over steps for {html.escape(labels)}">{axis}{"".join(body)}'
        "</svg>"
    )


def _ticks(top: int, n: int = 5) -> list[int]:
    """About ``n`` round tick values in [0, top]."""
    raw = max(1, top / n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return list(range(0, top + 1, int(step)))


def stats_rows(view: WalkView) -> list[tuple[str, str]]:
    s = view.stats
    get = (lambda k: getattr(s, k, 0)) if s is not None else (lambda k: 0)
    status = view.verdict()[1]
    leaf = "—" if view.reached_leaf is None else ("yes" if view.reached_leaf else "no")
    wall = float(get("wall_s") or 0.0)
    rows = [
        ("status", status),
        ("steps", str(get("steps"))),
        (
            "backtracks" if view.label.split()[0] not in POOLS else "backtracks (discarded)",
            str(get("backtracks")),
        ),
        ("restarts", str(get("restarts"))),
        ("depth (max)", f"{view.depth} ({get('max_depth')})"),
        ("forward tokens", str(get("forward_tokens"))),
        ("verifier calls", f"{get('verifier_calls')} ({get('verifier_evals')} values)"),
        ("model positions/s", f"{view.tokens_per_s:.1f}"),
        ("output tokens", str(view.output_tokens) if view.done else "—"),
        ("reached leaf", leaf),
        ("tilt τ", "—" if view.tilt is None else f"{view.tilt:.3g}"),
    ]
    if wall:
        rows.append(("wall time", f"{wall:.2f} s"))
    if view.busy_s:
        rows.append(("own time", f"{view.busy_s:.2f} s"))
    return rows


def stats_html(view: WalkView) -> str:
    rows = "".join(
        f'<tr><th>{html.escape(k)}</th><td data-stat="{html.escape(k)}">{html.escape(v)}</td></tr>'
        for k, v in stats_rows(view)
    )
    code, words = view.verdict()
    return (
        f'<div class="vgb-verdict vgb-{code}" data-run="{html.escape(view.label)}" '
        f'data-verdict="{code}">{html.escape(view.label)}: {html.escape(words)}</div>'
        f'<table class="vgb-stats" data-run="{html.escape(view.label)}">'
        f"<caption>{html.escape(view.label)}</caption>{rows}</table>"
    )


def compare_html(views: list[WalkView]) -> str:
    """Compare mode: the verdicts in words ("vgb passes, plain fails") and the cost of each run
    against the baseline (the last view) on one scale."""
    if len(views) < 2:
        return ""
    words = ", ".join(f"{v.label.replace(' (baseline)', '')} {v.verdict()[0]}" for v in views)
    base = views[-1]

    def get(v, k):
        return float(getattr(v.stats, k, 0) or 0) if v.stats is not None else 0.0

    rows = []
    for v in views:
        ft, bft = get(v, "forward_tokens"), get(base, "forward_tokens")
        ratio = f"{ft / bft:.1f}×" if bft else "—"
        rows.append(
            f"<tr><th>{html.escape(v.label)}</th><td>{html.escape(v.verdict()[1])}</td>"
            f'<td data-stat="forward tokens">{int(ft)}</td>'
            f'<td data-stat="forward ratio">{ratio}</td>'
            f"<td>{v.own_tokens_per_s:.1f}</td><td>{v.busy_s:.2f} s</td></tr>"
        )
    return (
        f'<div class="vgb-compare" data-verdicts="{html.escape(words)}"><div '
        f'class="vgb-compare-words">{html.escape(words)}</div><table class="vgb-stats">'
        "<tr><th>run</th><th>verdict</th><th>forward tokens</th><th>vs baseline</th>"
        "<th>output tokens/s (own time)</th><th>own time</th></tr>"
        f"{''.join(rows)}</table></div>"
    )


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
.vgb-verdict { font-weight: 600; padding: 4px 8px; border-radius: 6px; margin: 4px 0; }
.vgb-passes { background: #e8f6ec; color: #1e7b3a; }
.vgb-fails, .vgb-error { background: #fdecea; color: #8a1c12; }
.vgb-unfinished { background: #fff4e0; color: #8a5a00; }
.vgb-complete, .vgb-running, .vgb-cancelled { background: #eef2f8; color: #34495e; }
.vgb-compare-words { font-weight: 600; font-size: 15px; margin-bottom: 4px; }
.vgb-tree { font-size: 13px; max-height: 420px; overflow: auto; border: 1px solid #ddd;
  border-radius: 6px; padding: 6px; }
.vgb-tree ul { list-style: none; padding-left: 14px; margin: 0;
  border-left: 1px dotted #ccc; }
.vgb-node code { background: #f4f4f4; padding: 0 3px; }
.vgb-onpath { font-weight: 700; }
.vgb-onpath code { background: #dbe8ff; }
.vgb-backtracked b { color: #c0392b; }
.vgb-unvisited { opacity: 0.55; }
.vgb-meta { color: #666; font-size: 12px; }
.vgb-step { font-size: 13px; }
.vgb-options { border-collapse: collapse; margin-top: 4px; }
.vgb-options td, .vgb-options th { padding: 1px 8px; border-bottom: 1px solid #eee; }
.vgb-drawn { background: #fff4c2; font-weight: 600; }
.vgb-note { color: #666; font-size: 12px; }
/* overflow: clip (not hidden) keeps the container from being a scroll box, so the run bar
   sticks to the window */
.gradio-container { overflow: clip !important; }
#vgb-run-bar { position: sticky; top: 0; z-index: 20; background: #fff !important;
  padding: 6px 0; box-shadow: 0 2px 4px rgba(0, 0, 0, 0.06); }
.vgb-drop { cursor: pointer; }
.vgb-node code { font-size: 13px; }
.vgb-error { color: #8a1c12; background: #fdecea; border: 1px solid #e6b0aa; padding: 8px;
  border-radius: 6px; }
"""


def run_record(views: list[WalkView], settings: dict) -> dict:
    """One run as plain data (the JSON download): settings, and per sampler its verdict, final
    text, stats, events and the explored tree's size."""
    runs = []
    for v in views:
        st = v.stats.as_dict() if hasattr(v.stats, "as_dict") else {}
        runs.append(
            {
                "sampler": v.label,
                "verifier": v.verifier,
                "verdict": v.verdict()[0],
                "verdict_text": v.verdict()[1],
                "text": v.text,
                "finish_reason": v.finish_reason,
                "reached_leaf": v.reached_leaf,
                "tilt": v.tilt,
                "output_tokens": v.output_tokens,
                "own_time_s": round(v.busy_s, 4),
                "stats": st,
                "explored_prefixes": len(v.tree.nodes),
                "events": v.log,
                "events_dropped": max(0, v.events - 1 - len(v.log)),
            }
        )
    return {"format": "mlx-vgb run v1", "settings": settings, "runs": runs}


# clicking a backtrack dot of the depth plot opens that step in the "Inspect a step" tab
HEAD = """<script>
document.addEventListener('click', (e) => {
  const dot = e.target.closest && e.target.closest('.vgb-drop');
  if (!dot) return;
  const tab = [...document.querySelectorAll('button[role=tab]')]
    .find((b) => b.innerText.trim() === 'Inspect a step');
  if (tab) tab.click();
  const base = (dot.closest('g.vgb-series')?.dataset.run || '').includes('(baseline)');
  setTimeout(() => {
    const radio = document.querySelector(`#inspect-run input[value=${base ? 'baseline' : 'run'}]`);
    if (radio && !radio.checked) radio.click();
    const box = document.querySelector('#inspect-step input');
    if (!box) return;
    box.value = dot.dataset.step;
    box.dispatchEvent(new Event('input', {bubbles: true}));
    box.dispatchEvent(new Event('change', {bubbles: true}));
    // Gradio takes the box's new value asynchronously: press Show until the step appears
    const want = `#step-view .vgb-step[data-step='${dot.dataset.step}']`;
    let tries = 0;
    const show = () => {
      if (document.querySelector(want) || tries++ >= 8) return;
      document.querySelector('#inspect-show')?.click();
      setTimeout(show, 600);
    };
    setTimeout(show, 200);
  }, 200);
});
</script>"""
