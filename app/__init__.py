"""The local web UI (`mlx-vgb app`): run a sampler, watch the walk (erased text struck through,
depth over steps), compare with a baseline. Built on the public API only (``mlx_vgb.generate``).
"""

from .render import WalkView, depth_svg, stats_html, text_html


def build_app(*args, **kwargs):
    """``mlx_vgb.app.ui.build_app`` (imported on use: Gradio is slow to import)."""
    from .ui import build_app as _build

    return _build(*args, **kwargs)


__all__ = ["WalkView", "build_app", "depth_svg", "stats_html", "text_html"]
