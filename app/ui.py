"""The Gradio page: settings on the left; the live text, the depth-over-steps picture and the
stats on the right (with a baseline column beside them in compare mode).

``build_app(model=...)`` returns the ``gr.Blocks``; ``mlx_vgb.app.cli`` launches it.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import gradio as gr

from ..errors import ConfigError
from ..registry import SAMPLERS
from . import examples as ex
from .explore import step_html, tree_html
from .history import add_to_history, history_outputs, save_run_json
from .render import (
    CSS,
    WalkView,
    compare_html,
    depth_svg,
    error_html,
    stats_html,
    text_html,
)
from .runs import ModelCache, Runner, user_message
from .settings import (
    BASELINES,
    BLOCKS,
    CHOICES,
    DEFAULT_MODEL_CHOICE,
    GENERATOR_PICK,
    VERIFIERS,
    RunSettings,
    command_line,
    model_choices,
)
from .userfiles import save_verifier_module

TITLE = "mlx-vgb: verifier-guided backtracking"
INTRO = (
    "VGB samples with a random walk on the tree of prefixes: at each step it moves to a child "
    "(next token or block) or **back to the parent**, weighted by the verifier's value. Erased "
    "text is shown ~~struck through~~; the final text is clean. Every run gets a verdict from "
    "the selected verifier (passes / fails / unfinished). The picture shows the depth over "
    "steps (every drop is a backtrack); the tabs below it show the explored tree and each "
    "step's options."
)

# the verifier settings each kind uses (the others are hidden)
VERIFIER_FIELDS = {
    "no-letter": ("letter", "alpha"),
    "regex": ("pattern",),
    "forbid": ("words",),
    "unit-tests": ("tests",),
    "head": ("verifier_path",),
    "model": ("verifier_path",),
    "python function": ("function",),
}
PARAM_FIELDS = ("letter", "alpha", "pattern", "words", "tests", "verifier_path", "function")


N_PANEL_OUTPUTS = 4  # live text, verdict + stats, final text, explored tree


def _panel(view: WalkView | None) -> list:
    # plain values, not gr.update(): Gradio's Runs page shows an update as "[object Object]"
    if view is None:
        return [""] * N_PANEL_OUTPUTS
    return [
        text_html(view),
        stats_html(view),
        view.text,
        tree_html(view.tree, view.decode or str, view.label, view.final_tokens),
    ]


def _form_values(preset: dict, d: RunSettings, fields: list[str]) -> list:
    return [preset.get(f, getattr(d, f)) for f in fields]


def build_app(
    model: str | None = None,
    *,
    load=None,
    stream_generate=None,
    update_interval_s: float = 0.1,
    max_concurrent: int = 4,
    preload: bool = False,
) -> gr.Blocks:
    """The web app on ``model`` (None: the embedded default SmolLM2; or an MLX folder / hub id).

    ``load`` / ``stream_generate`` default to ``mlx_vgb.generate``'s (tests may pass others);
    ``update_interval_s``: the page is redrawn at most this often while a run streams.
    """
    if load is None or stream_generate is None:
        import importlib

        _gen = importlib.import_module("mlx_vgb.generate")  # (mlx_vgb.generate is a function)

        load = load or _gen.load
        stream_generate = stream_generate or _gen.stream_generate
    models = ModelCache(load, model)
    runner = Runner(models, stream_generate, update_interval_s)
    if preload:
        runner.worker.call(models.get, model)
    fields = [f.name for f in dataclasses.fields(RunSettings)]
    presets = ex.examples()
    first = presets[0]
    d = RunSettings(**{k: v for k, v in first.items() if k != "title"})
    defaults = RunSettings()
    model_label = model or "embedded SmolLM2-135M-Instruct"

    with gr.Blocks(title=TITLE, **_blocks_kwargs()) as app:
        app.vgb_runner = runner  # for tests and the status endpoint
        app.vgb_css = CSS
        gr.Markdown(f"## {TITLE}\n{INTRO}")
        history = gr.BrowserState([], storage_key="mlx-vgb-history")
        with gr.Row():
            with gr.Column(scale=2, min_width=340):
                c = {}
                with gr.Row(elem_id="vgb-run-bar"):
                    run_btn = gr.Button("Run", variant="primary", elem_id="run", scale=2)
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1)
                    preset = gr.Dropdown(
                        [p["title"] for p in presets],
                        value=first["title"],
                        label="Preset (task)",
                        elem_id="preset",
                        scale=3,
                    )
                c["prompt"] = gr.Textbox(label="Prompt", lines=4, value=d.prompt, elem_id="prompt")
                with gr.Accordion("Model", open=False):
                    c["generator"] = gr.Textbox(
                        value=GENERATOR_PICK, visible=False, label="Generator"
                    )
                    c["model_path"] = gr.Dropdown(
                        model_choices(model_label),
                        value=DEFAULT_MODEL_CHOICE,
                        allow_custom_value=True,
                        elem_id="model",
                        label="Model (registry, converted folders, or type a folder / hub id)",
                    )
                with gr.Group():
                    c["verifier"] = gr.Dropdown(
                        list(VERIFIERS), value=d.verifier, label="Verifier", elem_id="verifier"
                    )
                    with gr.Row():
                        c["letter"] = gr.Textbox(
                            label="Forbidden letter", value=d.letter, max_lines=1, elem_id="letter"
                        )
                        c["alpha"] = gr.Number(
                            value=d.alpha, label="alpha (V^ = alpha^(H-h) r)", elem_id="alpha"
                        )
                    c["pattern"] = gr.Textbox(
                        label="Regex (full match)",
                        visible=False,
                        value="",
                        placeholder=r"[A-Z][a-z ]+\.",
                        elem_id="pattern",
                    )
                    c["words"] = gr.Textbox(
                        label="Forbidden strings (separated by |; spaces count)",
                        visible=False,
                        value="",
                    )
                    c["tests"] = gr.Code(
                        label="Unit tests (asserts run after the response's code)",
                        language="python",
                        visible=False,
                        value="",
                        elem_id="tests",
                    )
                    tests_file = gr.File(
                        label="…or upload a tests file (.py)",
                        visible=False,
                        file_types=[".py"],
                        type="filepath",
                        elem_id="tests-file",
                    )
                    c["verifier_path"] = gr.Textbox(
                        label="Verifier folder", visible=False, value=""
                    )
                    c["function"] = gr.Textbox(
                        label="Function (package.module:function)",
                        visible=False,
                        value="",
                        elem_id="function",
                    )
                    module_file = gr.File(
                        label="…or upload a verifier module (.py with fn(text, complete) -> float)",
                        visible=False,
                        file_types=[".py"],
                        type="filepath",
                        elem_id="module-file",
                    )
                with gr.Group():
                    with gr.Row():
                        c["sampler"] = gr.Dropdown(
                            list(SAMPLERS), value=d.sampler, label="Sampler", elem_id="sampler"
                        )
                        c["choice"] = gr.Dropdown(
                            list(CHOICES), value=d.choice, label="Choice rule", elem_id="choice"
                        )
                        c["block"] = gr.Dropdown(
                            list(BLOCKS),
                            value=d.block,
                            allow_custom_value=True,
                            label="Block (action)",
                            elem_id="block",
                        )
                    with gr.Row():
                        c["candidates"] = gr.Number(
                            value=d.candidates,
                            precision=0,
                            label="Candidates K",
                            elem_id="candidates",
                        )
                        c["temp"] = gr.Number(
                            value=d.temp, step=0.1, label="Temperature", elem_id="temp"
                        )
                    with gr.Row():
                        c["max_tokens"] = gr.Number(
                            value=d.max_tokens,
                            precision=0,
                            label="Max tokens (H)",
                            elem_id="max-tokens",
                        )
                        c["max_steps"] = gr.Number(
                            value=d.max_steps,
                            precision=0,
                            label="Max steps (0: none)",
                            elem_id="max-steps",
                        )
                        c["seed"] = gr.Number(
                            value=d.seed, precision=0, label="Seed", elem_id="seed"
                        )
                with gr.Accordion("More knobs", open=False):
                    c["drift"] = gr.Number(
                        value=defaults.drift,
                        step=0.05,
                        label="Drift lambda (parent weight, (0, 1])",
                        elem_id="drift",
                    )
                    c["top_p"] = gr.Number(
                        value=defaults.top_p, step=0.05, label="top-p", elem_id="top-p"
                    )
                    c["top_k"] = gr.Number(
                        value=0, precision=0, label="top-k (0: off)", elem_id="top-k"
                    )
                    c["system_prompt"] = gr.Textbox(label="System prompt", value="")
                    c["prefill"] = gr.Textbox(
                        label="Answer starts with (the model continues it)",
                        value="",
                        lines=2,
                        elem_id="prefill",
                    )
                with gr.Row():
                    c["compare"] = gr.Checkbox(
                        label="Compare with a baseline", value=False, elem_id="compare"
                    )
                    c["baseline"] = gr.Dropdown(
                        list(BASELINES),
                        value=defaults.baseline,
                        label="Baseline",
                        elem_id="baseline",
                    )
                with gr.Accordion("History (kept in this browser)", open=True):
                    hist_pick = gr.Dropdown(
                        [], label="Earlier runs", elem_id="history", interactive=True
                    )
                    restore_btn = gr.Button("Restore its settings", elem_id="restore", size="sm")
                    hist_html = gr.HTML(elem_id="history-list")
            with gr.Column(scale=3, min_width=480):
                status = gr.HTML(
                    value='<div class="vgb-status">ready</div>', elem_id="status", label="Status"
                )
                summary = gr.HTML(elem_id="compare-summary", label="Comparison")
                with gr.Row():
                    panels = []
                    for i in range(2):
                        with gr.Column(visible=(i == 0)) as col:
                            live = gr.HTML(label="Walk", elem_id=f"walk-{i}")
                            stats = gr.HTML(elem_id=f"stats-{i}", label="Verdict and stats")
                            final = gr.Textbox(
                                label="Final text", lines=3, interactive=False, elem_id=f"final-{i}"
                            )
                        panels.append(col)
                        panels.append([live, stats, final])
                plot = gr.HTML(elem_id="depth", label="Depth over steps")
                with gr.Tab("Explored tree"):
                    trees = [
                        gr.HTML(elem_id=f"tree-{i}", label=f"Explored tree {i}") for i in range(2)
                    ]
                with gr.Tab("Inspect a step"):
                    with gr.Row():
                        which = gr.Radio(
                            ["run", "baseline"], value="run", label="Run", elem_id="inspect-run"
                        )
                        step_box = gr.Number(
                            value=0, precision=0, label="Step (0: the last)", elem_id="inspect-step"
                        )
                        step_btn = gr.Button("Show", elem_id="inspect-show", size="sm")
                    step_view = gr.HTML(elem_id="step-view", label="Step")
                with gr.Tab("Run as JSON"):
                    json_file = gr.File(
                        label="Download (events and stats)",
                        elem_id="run-json-file",
                        interactive=False,
                    )
                    json_code = gr.Code(
                        language="json",
                        label="JSON (copy button at the top right)",
                        elem_id="run-json",
                        buttons=["copy"],
                        max_lines=20,
                        interactive=False,
                    )
                command = gr.Textbox(
                    label="Same run from the command line",
                    interactive=False,
                    max_lines=3,
                    elem_id="command",
                )

        inputs = [c[f] for f in fields]
        panel_cols = [panels[0], panels[2]]
        panel_outs = [panels[1], panels[3]]
        outputs = [status, command, summary, plot] + [
            o for i in range(2) for o in panel_outs[i] + [trees[i]]
        ]

        def outputs_for(views, status_html, cmd=None):
            views = list(views)
            padded = views + [None] * (2 - len(views))
            out = [
                status_html,
                gr.update() if cmd is None else cmd,
                compare_html(views) if len(views) > 1 else "",
                depth_svg(views) if views else "",
            ]
            for v in padded:
                p = _panel(v)
                out += p[:3] + [p[3]]
            return out

        def on_run(*values, request: gr.Request = None):
            if len(values) > len(fields):  # Gradio passes the request positionally (signature)
                values, request = values[: len(fields)], values[len(fields)]
            settings = RunSettings(**dict(zip(fields, values)))
            session = getattr(request, "session_hash", None) or "anonymous"
            views: list = []
            try:
                cmd = command_line(settings, model)
                for views, line in runner.run(settings, session):
                    yield outputs_for(views, _status(line), cmd)
            except Exception as e:  # noqa: BLE001 - every error becomes a message in the page
                msg = user_message(e)
                for v in views:
                    v.error = v.error or ("stopped" if not v.done else None)
                gr.Warning(msg)
                yield outputs_for(views, error_html(msg), command_line(settings, model))

        # named parameters (not *values) so that API clients see prompt=, verifier=, ...
        on_run.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    f, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=getattr(defaults, f)
                )
                for f in fields
            ]
            + [
                inspect.Parameter(
                    "request",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=None,
                    annotation=gr.Request,
                )
            ]
        )

        def on_cancel(request: gr.Request = None):
            session = getattr(request, "session_hash", None) or "anonymous"
            run = runner.registry.cancel(session)
            unfinished = [v for v in (run.views if run else []) if not v.done]
            if not unfinished:
                return outputs_for([], _status("nothing to cancel"))
            for v in unfinished:
                v.cancelled = True
            return outputs_for(run.views, _status("cancelled"))

        def last_views(request) -> list:
            session = getattr(request, "session_hash", None) or "anonymous"
            run = runner.registry.last(session)
            return run.views if run is not None else []

        def on_inspect(which_run, step, request: gr.Request = None):
            views = last_views(request)
            i = 1 if which_run == "baseline" and len(views) > 1 else 0
            if not views:
                return '<div class="vgb-step">run something first</div>'
            v = views[i]
            return step_html(v.tree, v.decode or str, int(step) if step else None, v.label)

        def on_finished(hist, *values, request: gr.Request = None):
            """After a run: the JSON export, the step view, and the run added to the history."""
            if len(values) > len(fields):  # the request comes positionally (see on_run)
                values, request = values[: len(fields)], values[len(fields)]
            views = last_views(request)
            if not views or not any(v.done for v in views):
                return [gr.update()] * 6
            settings = dict(zip(fields, values))
            text, path = save_run_json(views, settings)
            hist = add_to_history(hist, views, settings)
            v = views[0]
            step = step_html(v.tree, v.decode or str, None, v.label)
            return [text, path, step] + history_outputs(hist) + [hist]

        on_finished.__signature__ = inspect.Signature(
            [inspect.Parameter("hist", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(f, inspect.Parameter.POSITIONAL_OR_KEYWORD) for f in fields]
            + [
                inspect.Parameter(
                    "request",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=None,
                    annotation=gr.Request,
                )
            ]
        )

        def on_restore(hist, pick):
            entry = next((h for h in hist or [] if h.get("id") == pick), None)
            if entry is None:
                return [gr.update()] * len(fields)
            s = entry["settings"]
            return [s.get(f, getattr(defaults, f)) for f in fields]

        def on_preset(title):
            p = next((p for p in presets if p["title"] == title), None)
            if p is None:
                return [gr.update()] * (len(fields) + len(PARAM_FIELDS) + 2)
            vals = _form_values(p, defaults, fields)
            vals[fields.index("generator")] = gr.update()
            vals[fields.index("model_path")] = gr.update()
            return vals + on_verifier(p.get("verifier", "none"))

        def on_verifier(kind):
            shown = VERIFIER_FIELDS.get(kind, ())
            return [gr.update(visible=f in shown) for f in PARAM_FIELDS] + [
                gr.update(visible=kind == "unit-tests"),
                gr.update(visible=kind == "python function"),
            ]

        def on_tests_file(path):
            if not path:
                return gr.update()
            try:
                return Path(path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                gr.Warning(f"Unit tests: cannot read the uploaded file ({e})")
                return gr.update()

        def on_module_file(path):
            if not path:
                return gr.update()
            try:
                return save_verifier_module(Path(path).read_text(), Path(path).name)
            except (OSError, UnicodeDecodeError, ConfigError) as e:
                gr.Warning(str(e))
                return gr.update()

        run_event = run_btn.click(
            on_run,
            inputs,
            outputs,
            api_name="run",
            concurrency_limit=max_concurrent,
            concurrency_id="walks",
            show_progress="minimal",
        )
        run_event.then(
            on_finished,
            [history] + inputs,
            [json_code, json_file, step_view, hist_pick, hist_html, history],
            api_name=False,
        )
        cancel_btn.click(
            on_cancel, None, outputs, api_name="cancel", cancels=[run_event], concurrency_limit=None
        )
        verifier_outs = [c[f] for f in PARAM_FIELDS] + [tests_file, module_file]
        c["verifier"].change(on_verifier, c["verifier"], verifier_outs, api_name=False)
        preset.input(on_preset, preset, inputs + verifier_outs, api_name=False)
        c["compare"].change(
            lambda on: gr.update(visible=bool(on)), c["compare"], panel_cols[1], api_name=False
        )
        tests_file.upload(on_tests_file, tests_file, c["tests"], api_name=False)
        module_file.upload(on_module_file, module_file, c["function"], api_name=False)
        step_btn.click(on_inspect, [which, step_box], step_view, api_name="inspect")
        step_box.submit(on_inspect, [which, step_box], step_view, api_name=False)
        restore_btn.click(on_restore, [history, hist_pick], inputs, api_name=False)
        app.load(
            lambda h: history_outputs(h or []), history, [hist_pick, hist_html], api_name=False
        )

        def server_status():
            return {
                "active_runs": runner.registry.active(),
                "finished_runs": runner.registry.finished,
                "cancelled_runs": runner.registry.cancelled,
                "models_loaded": runner.models.loaded(),
                "engine": dict(vars(runner.worker.engine.stats)),
            }

        gr.Button("status", visible=False).click(
            server_status, None, gr.JSON(visible=False), api_name="status", queue=False
        )
    return app


def _status(line: str) -> str:
    return f'<div class="vgb-status">{line}</div>'


def _blocks_kwargs() -> dict:
    """Gradio < 6 takes css in Blocks(); Gradio 6 in launch() (see cli.launch_kwargs)."""
    if "css" in inspect.signature(gr.Blocks.__init__).parameters:
        return {"css": CSS}
    return {}
