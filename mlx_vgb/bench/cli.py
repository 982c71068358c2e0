"""`mlx-vgb bench TASK [--quick] [--out DIR] [--seed N] ...`: run one benchmark.

Each task is a module ``mlx_vgb.bench.<task>`` with ``add_args(parser)`` and ``run(args)``;
it writes results.json, results.md and PNG plots into ``args.out`` (default ``results/<task>/``;
with ``--quick``, ``results/tmp/<task>-quick/``, which git ignores).

SIGUSR1 drains a run (``code``, ``testcase_law``, ``dyck_fig1`` and the benches on
``harness.engine_samples``): no new run starts, the runs in flight finish and their rows are
written, and the command stops with status 75 (``DRAINED_STATUS``); rerun it to resume. A run
killed in flight is lost whole (a walk's tree cannot be resumed), so drain a long run before a
deadline instead of killing it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from ..dist import add_row_memory_arg, apply_row_memory
from ..errors import VGBError
from .harness import DRAINED_STATUS, Drained, drain_on_signal
from .report import command_line, default_out

TASKS = {
    "abc": "mlx_vgb.bench.abc",
    "dyck": "mlx_vgb.bench.dyck",
    "dyck_fig1": "mlx_vgb.bench.dyck_fig1",
    "dyck_fidelity": "mlx_vgb.bench.dyck_fidelity",
    "letters": "mlx_vgb.bench.letters",
    "testcases": "mlx_vgb.bench.testcases",
    "testcase_law": "mlx_vgb.bench.testcase_law",
    "humaneval": "mlx_vgb.bench.humaneval",
    "code": "mlx_vgb.bench.code",
    "perf": "mlx_vgb.bench.perf",
    "exactness": "mlx_vgb.bench.exactness",
    "models": "mlx_vgb.bench.models",
}


def setup_arg_parser(task: str, module) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"mlx-vgb bench {task}", description=(module.__doc__ or "").strip().splitlines()[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (under 2 minutes); outputs to results/tmp/<task>-quick",
    )
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    add_row_memory_arg(p)
    module.add_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mlx-vgb bench {" + ",".join(TASKS) + "} [--quick] [--out DIR] [--seed N] ...")
        sys.exit(0 if argv else 2)
    task = argv.pop(0)
    if task not in TASKS:
        print(
            f"mlx-vgb bench: unknown task {task!r}; choose one of {', '.join(TASKS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        module = importlib.import_module(TASKS[task])
    except ModuleNotFoundError as e:
        print(f"mlx-vgb bench: task {task!r} is not available ({e})", file=sys.stderr)
        sys.exit(2)
    args = setup_arg_parser(task, module).parse_args(argv)
    args.task = task
    args.command = command_line([task] + argv)
    if args.out is None:
        args.out = default_out(task, args.quick)
    t0 = time.perf_counter()
    drain_on_signal()  # SIGUSR1: finish the runs in flight, start no more, stop
    try:
        apply_row_memory(args)
        wrote = module.run(args) is not False  # False: no report (e.g. --write-prompts)
    except Drained as e:
        print(f"mlx-vgb bench {task}: {e}", file=sys.stderr)
        raise SystemExit(DRAINED_STATUS) from None
    except VGBError as e:
        print(f"mlx-vgb bench {task}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if wrote:
        print(
            f"[{task}] wrote {args.out}/results.md, results.json ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
