"""`mlx-vgb SUBCOMMAND ...`: one entry point, one module per subcommand (as mlx_lm.cli)."""

import importlib
import sys

SUBCOMMANDS = {
    "generate": "mlx_vgb.generate",
    "convert": "mlx_vgb.convert.cli",
    "train-verifier": "mlx_vgb.train_verifier",
    "bench": "mlx_vgb.bench.cli",
    "app": "mlx_vgb.app.cli",
    "server": "mlx_vgb.server",
    "models": "mlx_vgb.models_cli",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: mlx-vgb {" + ",".join(SUBCOMMANDS) + "} ...")
        print("Pass --help to a subcommand for its options, e.g. mlx-vgb generate --help")
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    if sys.argv[1] == "--version":
        from mlx_vgb import __version__

        print(__version__)
        return
    name = sys.argv.pop(1)
    if name not in SUBCOMMANDS:
        print(
            f"mlx-vgb: unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.argv[0] = f"mlx-vgb {name}"
    importlib.import_module(SUBCOMMANDS[name]).main()


if __name__ == "__main__":
    main()
