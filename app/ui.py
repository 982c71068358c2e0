"""The Gradio page: settings on the left; the live text, the depth-over-steps picture and the
stats on the right (with a baseline column beside them in compare mode).

``build_app(model=...)`` returns the ``gr.Blocks``; ``mlx_vgb.app.cli`` launches it.
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex

import gradio as gr

from ..registry import SAMPLERS
from . import examples as ex
from .render import CSS, WalkView, depth_svg, error_html, stats_html, text_html
from .runs import (
    BASELINES,
    BLOCKS,
    GENERATOR_DEFAULT,
    GENERATORS,
    VERIFIERS,
    ModelCache,
    Runner,
    RunSettings,
    user_message,
)

TITLE = "mlx-vgb: verifier-guided backtracking"
INTRO = (
    "VGB samples with a random walk on the tree of prefixes: at each step it moves to a child "
    "(next token or block) or **back to the parent**, weighted by the verifier's value. Erased "
    "text is shown ~~struck through~~; the final text is clean. The picture shows the depth "
    "over steps: every drop is a backtrack."
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
N_PANEL_OUTPUTS = 4  # live text, depth picture, stats, final text


def command_line(s: RunSettings, default_model: str | None) -> str:
    """The ``mlx-vgb generate`` command that runs the same settings (tests file shown as
    tests.py)."""
    try:
        spec = s.verifier_settings().to_string()
    except Exception:  # noqa: BLE001 - the run itself reports bad settings
        spec = "?"
    parts = ["mlx-vgb", "generate"]
    model = default_model if s.generator == GENERATOR_DEFAULT else s.model_path
    if model:
        parts += ["--model", model]
    parts += ["--prompt", s.prompt, "--verifier", spec, "--sampler", s.sampler,
              "--max-tokens", str(s.max_tokens), "--temp", f"{s.temp:g}", "--seed", str(s.seed),
              "--candidates", str(s.candidates)]
    if s.block and s.block != "token":
        parts += ["--block", s.block]
    if s.max_steps:
        parts += ["--max-steps", str(s.max_steps)]
    if s.drift != 1:
        parts += ["--drift", f"{s.drift:g}"]
    if s.top_p != 1:
        parts += ["--top-p", f"{s.top_p:g}"]
    if s.top_k:
        parts += ["--top-k", str(s.top_k)]
    if s.system_prompt:
        parts += ["--system-prompt", s.system_prompt]
    return " ".join(shlex.quote(p) for p in parts) + " --verbose"


def _panel(view: WalkView | None) -> list:
    if view is None:
        return [gr.update()] * N_PANEL_OUTPUTS
    return [text_html(view), depth_svg(view), stats_html(view), view.text]


def build_app(model: str | None = None, *, load=None, stream_generate=None,
              update_interval_s: float = 0.1, max_concurrent: int = 4,
              preload: bool = False) -> gr.Blocks:
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
    d = RunSettings()
    model_label = model or "embedded SmolLM2-135M-Instruct"

    with gr.Blocks(title=TITLE, **_blocks_kwargs()) as app:
        app.vgb_runner = runner  # for tests and the status endpoint
        app.vgb_css = CSS
        gr.Markdown(f"## {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                c = {}
                c["prompt"] = gr.Textbox(label="Prompt", lines=4, value=ex.examples()[0]["prompt"],
                                         elem_id="prompt")
                with gr.Accordion("Generator", open=False):
                    c["generator"] = gr.Radio(list(GENERATORS), value=GENERATOR_DEFAULT,
                                              label=f"Generator (default: {model_label})")
                    c["model_path"] = gr.Textbox(label="MLX folder or hub id", value="",
                                                 placeholder="~/models/Qwen2.5-0.5B-Instruct-4bit"
                                                 " or mlx-community/...")
                with gr.Group():
                    c["verifier"] = gr.Dropdown(list(VERIFIERS), value="no-letter",
                                                label="Verifier", elem_id="verifier")
                    with gr.Row():
                        c["letter"] = gr.Textbox(label="Forbidden letter", value="e",
                                                 max_lines=1)
                        c["alpha"] = gr.Slider(0.01, 1.0, value=d.alpha, step=0.01,
                                               label="alpha (V^ = alpha^(H-h) r)")
                    c["pattern"] = gr.Textbox(label="Regex (full match)", visible=False, value="",
                                              placeholder=r"[A-Z][a-z ]+\.")
                    c["words"] = gr.Textbox(label="Forbidden strings (separated by |)",
                                            visible=False, value="")
                    c["tests"] = gr.Code(label="Unit tests (asserts run after the response's "
                                               "code)", language="python", visible=False,
                                         value="")
                    c["verifier_path"] = gr.Textbox(label="Verifier folder", visible=False, value="")
                    c["function"] = gr.Textbox(label="Function (package.module:function)",
                                               visible=False, value="")
                with gr.Group():
                    with gr.Row():
                        c["sampler"] = gr.Dropdown(list(SAMPLERS), value=d.sampler,
                                                   label="Sampler")
                        c["block"] = gr.Dropdown(list(BLOCKS), value=d.block, allow_custom_value=True,
                                                 label="Block (action)")
                    with gr.Row():
                        c["candidates"] = gr.Number(value=d.candidates, precision=0, minimum=1,
                                                    label="Candidates K")
                        c["temp"] = gr.Number(value=d.temp, minimum=0, step=0.1,
                                              label="Temperature")
                    with gr.Row():
                        c["max_tokens"] = gr.Number(value=32, precision=0, minimum=1,
                                                    label="Max tokens (H)")
                        c["max_steps"] = gr.Number(value=2000, precision=0, minimum=0,
                                                   label="Max steps (0: none)")
                        c["seed"] = gr.Number(value=d.seed, precision=0, label="Seed")
                with gr.Accordion("More knobs", open=False):
                    c["drift"] = gr.Slider(0.05, 1.0, value=d.drift, step=0.05,
                                           label="Drift lambda (parent weight)")
                    c["top_p"] = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="top-p")
                    c["top_k"] = gr.Number(value=0, precision=0, minimum=0, label="top-k (0: off)")
                    c["system_prompt"] = gr.Textbox(label="System prompt", value="")
                with gr.Row():
                    c["compare"] = gr.Checkbox(label="Compare with a baseline", value=False,
                                               elem_id="compare")
                    c["baseline"] = gr.Dropdown(list(BASELINES), value=d.baseline,
                                                label="Baseline")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=3, min_width=420):
                status = gr.HTML(value='<div class="vgb-status">ready</div>', elem_id="status")
                with gr.Row():
                    panels = []
                    for i, title in enumerate(("VGB", "Baseline")):
                        with gr.Column(visible=(i == 0)) as col:
                            gr.HTML(f'<div class="vgb-panel-title">{title}</div>')
                            live = gr.HTML(label="Walk", elem_id=f"walk-{i}")
                            plot = gr.HTML(elem_id=f"depth-{i}")
                            stats = gr.HTML(elem_id=f"stats-{i}")
                            final = gr.Textbox(label="Final text", lines=3, interactive=False,
                                               elem_id=f"final-{i}")
                        panels.append((col, [live, plot, stats, final]))
                command = gr.Textbox(label="Same run from the command line", interactive=False,
                                     max_lines=3, elem_id="command")

        inputs = [c[f] for f in fields]
        outputs = [status, command] + panels[0][1] + panels[1][1]

        def outputs_for(views, status_html, cmd=None):
            views = list(views) + [None] * (2 - len(views))
            return [status_html, gr.update() if cmd is None else cmd] + _panel(
                views[0]) + _panel(views[1])

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
                    cmd = None
            except Exception as e:  # noqa: BLE001 - every error becomes a message in the page
                msg = user_message(e)
                for v in views:
                    v.error = v.error or ("stopped" if not v.done else None)
                gr.Warning(msg)
                yield outputs_for(views, error_html(msg))

        # named parameters (not *values) so that API clients see prompt=, verifier=, ...
        on_run.__signature__ = inspect.Signature(
            [inspect.Parameter(f, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               default=getattr(d, f)) for f in fields]
            + [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=None, annotation=gr.Request)])

        def on_cancel(request: gr.Request = None):
            session = getattr(request, "session_hash", None) or "anonymous"
            run = runner.registry.cancel(session)
            unfinished = [v for v in (run.views if run else []) if not v.done]
            if not unfinished:
                return outputs_for([], _status("nothing to cancel"))
            for v in unfinished:
                v.cancelled = True
            return outputs_for(run.views, _status("cancelled"))

        def on_verifier(kind):
            shown = VERIFIER_FIELDS.get(kind, ())
            return [gr.update(visible=f in shown) for f in PARAM_FIELDS]

        run_event = run_btn.click(on_run, inputs, outputs, api_name="run",
                                  concurrency_limit=max_concurrent, concurrency_id="walks",
                                  show_progress="minimal")
        cancel_btn.click(on_cancel, None, outputs, api_name="cancel", cancels=[run_event],
                         concurrency_limit=None)
        c["verifier"].change(on_verifier, c["verifier"], [c[f] for f in PARAM_FIELDS],
                             api_name=False)
        c["compare"].change(lambda on: gr.update(visible=bool(on)), c["compare"],
                            panels[1][0], api_name=False)

        def server_status():
            return {"active_runs": runner.registry.active(),
                    "finished_runs": runner.registry.finished,
                    "cancelled_runs": runner.registry.cancelled,
                    "models_loaded": runner.models.loaded()}

        gr.Button("status", visible=False).click(server_status, None, gr.JSON(visible=False),
                                                 api_name="status", queue=False)

        exs = ex.examples()
        ex_fields = [f for f in fields if any(f in e for e in exs)]
        gr.Examples(
            examples=[[e.get(f, getattr(d, f)) for f in ex_fields] for e in exs],
            example_labels=[e["title"] for e in exs], inputs=[c[f] for f in ex_fields],
            label="Examples")
    return app


def _status(line: str) -> str:
    return f'<div class="vgb-status">{line}</div>'


def _blocks_kwargs() -> dict:
    """Gradio < 6 takes css in Blocks(); Gradio 6 in launch() (see cli.launch_kwargs)."""
    if "css" in inspect.signature(gr.Blocks.__init__).parameters:
        return {"css": CSS}
    return {}
