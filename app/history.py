"""A run kept after it ends: its JSON export (events and stats) and the browser's history of
runs (kept in the browser's local storage, restored into the form)."""

from __future__ import annotations

import html
import json
import tempfile
import time

import gradio as gr

from .render import run_record

MAX_HISTORY = 30  # runs kept in the browser's history


def save_run_json(views, settings: dict) -> tuple[str, str]:
    """(the run's JSON text, the path of a file holding it, for the download link)."""
    text = json.dumps(run_record(views, settings), indent=1, ensure_ascii=False)
    f = tempfile.NamedTemporaryFile(
        "w", suffix=".json", prefix="mlx-vgb-run-", delete=False, encoding="utf-8"
    )
    with f:
        f.write(text)
    return text, f.name


def add_to_history(hist: list | None, views, settings: dict) -> list:
    """The history with this run first (at most ``MAX_HISTORY`` entries)."""
    entry = {
        "id": f"{time.time():.3f}",
        "time": time.strftime("%H:%M:%S"),
        "title": f"{views[0].label} · {settings.get('verifier')} · "
        f"{(settings.get('prompt') or '')[:40]!r}",
        "verdict": "; ".join(f"{v.label}: {v.verdict()[1]}" for v in views),
        "text": views[0].text[:400],
        "settings": settings,
    }
    return ([entry] + list(hist or []))[:MAX_HISTORY]


def history_outputs(hist: list) -> list:
    """The history picker's choices and the list shown on the page."""
    choices = [(f"{h['time']} {h['title']}", h["id"]) for h in hist]
    items = "".join(
        f'<li data-id="{html.escape(h["id"])}"><b>{html.escape(h["time"])}</b> '
        f'{html.escape(h["title"])}: <span class="vgb-hverdict">{html.escape(h["verdict"])}'
        f"</span><br><code>{html.escape(h['text'][:120])}</code></li>"
        for h in hist
    )
    body = (
        f'<ol class="vgb-history">{items}</ol>'
        if items
        else '<div class="vgb-empty">no runs yet</div>'
    )
    return [gr.update(choices=choices, value=choices[0][1] if choices else None), body]
