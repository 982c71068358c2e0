"""`mlx-vgb app`: the local web UI (Gradio) on the embedded default model or ``--model``."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Sequence

from ..models import MODEL_HELP

DEFAULT_HOST = "127.0.0.1"
LAN_HOST = "0.0.0.0"
DEFAULT_PORT = 7860
DEFAULT_MAX_CONCURRENT = 4
DEFAULT_UPDATE_INTERVAL_S = 0.1


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-vgb app", description="Start the local web page that runs and shows VGB walks."
    )
    p.add_argument(
        "--model",
        default=None,
        help=MODEL_HELP,
    )
    p.add_argument(
        "--host", default=None, help=f"address to bind (default {DEFAULT_HOST}: this machine only)"
    )
    p.add_argument(
        "--share-lan",
        action="store_true",
        help=f"bind {LAN_HOST} so other machines on the network can open the page",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help="runs streamed at once; more wait in Gradio's queue",
    )
    p.add_argument(
        "--update-interval",
        type=float,
        default=DEFAULT_UPDATE_INTERVAL_S,
        help="redraw the page at most this often while a run streams (seconds)",
    )
    p.add_argument(
        "--no-preload",
        action="store_true",
        help="load the model on the first run instead of at start",
    )
    return p


def launch_kwargs(args: argparse.Namespace) -> dict:
    from .render import CSS, HEAD

    host = args.host or (LAN_HOST if args.share_lan else DEFAULT_HOST)
    kw = dict(
        server_name=host, server_port=args.port or None, share=False, show_error=False, quiet=False
    )
    import gradio as gr

    if "css" in inspect.signature(gr.Blocks.launch).parameters:  # Gradio >= 6
        kw["css"] = CSS
    if "head" in inspect.signature(gr.Blocks.launch).parameters:
        kw["head"] = HEAD
    return kw


def main(argv: Sequence[str] | None = None) -> None:
    args = setup_arg_parser().parse_args(argv)
    if args.max_concurrent < 1:
        print("mlx-vgb app: --max-concurrent must be >= 1", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    from ..errors import VGBError
    from .ui import build_app

    try:
        app = build_app(
            args.model,
            update_interval_s=args.update_interval,
            max_concurrent=args.max_concurrent,
            preload=not args.no_preload,
        )
    except VGBError as e:
        print(f"mlx-vgb app: error: {e}", file=sys.stderr)
        sys.exit(1)
    app.queue(default_concurrency_limit=args.max_concurrent)
    kw = launch_kwargs(args)
    print(
        f"mlx-vgb app: model {args.model or 'embedded SmolLM2'}; "
        f"serving on http://{kw['server_name']}:{kw['server_port'] or '(free port)'}",
        flush=True,
    )
    try:
        app.launch(**kw)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # MLX used from worker threads can abort at interpreter exit (ml-explore/mlx#3126):
        # the server is closed, so leave without running C++ static destructors.
        os._exit(0)


if __name__ == "__main__":
    main()
