"""Hugging Face safetensors generator -> MLX folder: `mlx_lm.convert`, written atomically."""

import os
from pathlib import Path

from .output import ConversionError, atomic_output, check_output


def convert_hf(
    hf_path: str | Path,
    mlx_path: str | Path,
    quantize: bool = False,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    q_mode: str = "affine",
    dtype: str | None = None,
    dequantize: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    force: bool = False,
) -> Path:
    """Run ``mlx_lm.convert`` (same flags) into a temp folder, then rename it to ``mlx_path``.

    ``hf_path`` is a local folder or a Hub repo id. An existing ``mlx_path`` is refused
    unless ``force``; a failed conversion leaves nothing behind.
    """
    from mlx_lm.convert import convert

    check_output(mlx_path, force)
    with atomic_output(mlx_path, force) as tmp:
        staged = tmp / "model"  # mlx_lm.convert wants a path that does not exist yet
        try:
            convert(
                hf_path=str(hf_path),
                mlx_path=str(staged),
                quantize=quantize,
                q_group_size=q_group_size,
                q_bits=q_bits,
                q_mode=q_mode,
                dtype=dtype,
                dequantize=dequantize,
                revision=revision,
                trust_remote_code=trust_remote_code,
            )
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ConversionError(f"mlx_lm.convert cannot convert {hf_path}: {e}") from e
        for f in staged.iterdir():
            os.rename(f, tmp / f.name)
        staged.rmdir()
    return Path(mlx_path)
