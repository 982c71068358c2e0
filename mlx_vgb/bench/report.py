"""What every benchmark writes: results.json, results.md (command line and date first) and PNG
plots, all written atomically into one results folder."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_write

DEFAULT_RESULTS_DIR = Path("results")
QUICK_SUBDIR = "tmp"  # results/tmp/ is git-ignored: --quick outputs go to results/tmp/<task>-quick


def default_out(task: str, quick: bool) -> Path:
    if quick:
        return DEFAULT_RESULTS_DIR / QUICK_SUBDIR / f"{task}-quick"
    return DEFAULT_RESULTS_DIR / task


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it: ``mlx-vgb bench TASK ...`` (argv: TASK, options)."""
    return shlex.join(["mlx-vgb", "bench", *argv])


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
    }
    try:
        import mlx.core as mx

        env["mlx"] = getattr(mx, "__version__", "?")
        env["mlx_device"] = str(mx.default_device())
    except Exception:  # pragma: no cover - mlx is a dependency
        pass
    return env


def _jsonable(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return _jsonable(x.item())
    if isinstance(x, Path):
        return str(x)
    return x


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(
    rows: Sequence[dict],
    columns: Sequence[str] | None = None,
    headers: dict[str, str] | None = None,
    digits: int = 3,
) -> str:
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    out = [
        "| " + " | ".join(headers.get(c, c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(out) + "\n"


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (0 for a single value)."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n == 1:
        return m, 0.0
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


@dataclass
class Report:
    """One task's results. ``rows``: the table rows (flat dicts); ``sections``: markdown
    paragraphs/tables, in order; ``plots``: PNG file names written next to results.md;
    ``engine``: the batched engine's stats of a bench that ran its samples through it."""

    task: str
    command: str
    config: dict
    date: str = field(default_factory=now)
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    environment: dict = field(default_factory=environment)
    engine: dict | None = None

    def add_section(self, title: str, body: str) -> None:
        self.sections.append(f"## {title}\n\n{body.rstrip()}\n")

    def to_json(self) -> dict:
        out = {
            "task": self.task,
            "command": self.command,
            "date": self.date,
            "config": self.config,
            "environment": self.environment,
            "summary": self.summary,
            "rows": self.rows,
            "plots": self.plots,
        }
        if self.engine is not None:
            out["engine"] = self.engine
        return _jsonable(out)

    def markdown(self) -> str:
        head = (
            f"# `{self.task}` benchmark\n\nCommand: `{self.command}`\n\nDate: {self.date}\n\n"
            f"Machine: {self.environment.get('system')} {self.environment.get('machine')}, "
            f"{self.environment.get('cpus')} CPUs, MLX {self.environment.get('mlx', '?')} "
            f"({self.environment.get('mlx_device', '?')})\n"
        )
        cfg = "\n".join(f"- {k}: `{_jsonable(v)}`" for k, v in self.config.items())
        body = "\n".join(self.sections)
        plots = "\n".join(f"![{p}]({p})" for p in self.plots)
        return f"{head}\n## Configuration\n\n{cfg}\n\n{body}\n{plots}\n"

    def write(self, out: Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "results.json", json.dumps(self.to_json(), indent=1) + "\n")
        atomic_write(out / "results.md", self.markdown())


def plot_lines(
    path: Path,
    series: Sequence[dict],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = False,
    logx: bool = False,
) -> None:
    """Line plot with error bars. Each series: {"label", "x", "y", "err" (optional)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    for s in series:
        ax.errorbar(
            s["x"],
            s["y"],
            yerr=s.get("err"),
            label=s["label"],
            marker="o",
            capsize=3,
            linestyle=s.get("linestyle", "-"),
            color=s.get("color"),
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_grid(
    path: Path,
    panels: Sequence[dict],
    *,
    xlabel: str,
    ylabel: str,
    suptitle: str,
    logy: bool = False,
) -> None:
    """Side-by-side panels; each panel: {"title", "series": [...] as in ``plot_lines``}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.5), dpi=110, sharey=True, squeeze=False)
    for ax, p in zip(axes[0], panels):
        for s in p["series"]:
            ax.errorbar(
                s["x"],
                s["y"],
                yerr=s.get("err"),
                label=s["label"],
                marker="o",
                capsize=3,
                linestyle=s.get("linestyle", "-"),
                color=s.get("color"),
            )
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel(xlabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_bars(
    path: Path,
    labels: Sequence[str],
    groups: dict[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    errs: dict[str, Sequence[float]] | None = None,
) -> None:
    """Grouped bar chart: ``groups`` maps a series name to one value per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    k = max(1, len(groups))
    w = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(labels) * k**0.5), 3.6), dpi=110)
    for i, (name, ys) in enumerate(groups.items()):
        ax.bar(
            x + (i - (k - 1) / 2) * w,
            ys,
            w,
            label=name,
            yerr=None if errs is None else errs.get(name),
            capsize=3,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_hist(
    path: Path,
    data: dict[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    bins: int | Sequence[float] = 20,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    for name, xs in data.items():
        if len(xs):
            ax.hist(
                xs,
                bins=bins,
                histtype="step",
                density=True,
                label=f"{name} (n={len(xs)})",
                linewidth=1.5,
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(Path(path), buf.getvalue())
