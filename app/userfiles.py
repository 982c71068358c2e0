"""Files the app keeps for its users (under ~/.cache/mlx-vgb/app): the tests box and uploaded
verifier modules (imported again when edited), and the model picker's choices."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
from pathlib import Path

from .settings import FieldError

log = logging.getLogger("mlx_vgb.app")


def app_home() -> Path:
    """Where the app keeps files it writes (the tests box, uploaded verifier modules)."""
    base = os.environ.get("MLX_VGB_HOME") or os.path.expanduser("~/.cache/mlx-vgb")
    d = Path(base) / "app"
    d.mkdir(parents=True, exist_ok=True)
    return d


def saved_file(text: str, stem: str, suffix: str) -> Path:
    """``text`` saved under ``app_home()`` by content hash (the command line names this file)."""
    h = hashlib.sha256(text.encode()).hexdigest()[:10]
    path = app_home() / f"{stem}-{h}{suffix}"
    if not path.exists():
        path.write_text(text)
    return path


def save_verifier_module(source: str, filename: str = "verifier.py") -> str:
    """An uploaded verifier module, saved under ``app_home()/modules`` (put on ``sys.path``);
    returns the ``module:function`` spec of its first ``fn(text, complete)`` function."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise FieldError("Verifier module", f"{filename} does not parse: {e}") from None
    fns = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and len(n.args.args) >= 2]
    if not fns:
        raise FieldError("Verifier module", f"{filename} defines no function fn(text, complete)")
    name = next((f for f in fns if f in ("verify", "verifier", "value")), fns[0])
    mods = app_home() / "modules"
    mods.mkdir(exist_ok=True)
    stem = "".join(ch if ch.isalnum() else "_" for ch in Path(filename).stem) or "verifier"
    (mods / f"{stem}.py").write_text(source)
    if str(mods) not in sys.path:
        sys.path.insert(0, str(mods))
    return f"{stem}:{name}"


def _installed_dirs() -> tuple[str, ...]:
    """Where the package's and the environment's code lives (not the user's own)."""
    import mlx_vgb

    return (
        str(Path(mlx_vgb.__file__).resolve().parent),
        str(Path(__file__).resolve().parent),
        sys.prefix,
        sys.base_prefix,
    )


def reload_if_changed(target: str) -> None:
    """A user's verifier module edited since it was imported is imported again (no restart)."""
    mod = sys.modules.get(target.partition(":")[0])
    path = getattr(mod, "__file__", None)
    if not path or not os.path.exists(path):
        return
    if path.startswith(_installed_dirs()):
        return  # installed code does not change under a running app
    mtime = os.path.getmtime(path)
    if getattr(mod, "_mlx_vgb_mtime", None) != mtime:  # first seen here, or edited since
        mod = importlib.reload(mod)
    mod._mlx_vgb_mtime = mtime
