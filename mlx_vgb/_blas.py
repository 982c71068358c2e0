"""Off macOS, the mlx[cpu] wheel links a reference BLAS, 5-40x slower than OpenBLAS for float32
matmuls. If an OpenBLAS library is on the system (Debian: libopenblas0-pthread), load it with
RTLD_GLOBAL before MLX so MLX's BLAS calls resolve to it. Opt out: MLX_VGB_NO_OPENBLAS=1; use
another library: MLX_VGB_BLAS=/path/libopenblas.so. Must run before ``import mlx``."""

import ctypes
import glob
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

loaded: str | None = None


def preload_openblas() -> str | None:
    global loaded
    if sys.platform == "darwin" or os.environ.get("MLX_VGB_NO_OPENBLAS") or loaded:
        return loaded
    if "mlx.core" in sys.modules:  # too late: MLX already bound its BLAS
        return None
    paths = [os.environ["MLX_VGB_BLAS"]] if os.environ.get("MLX_VGB_BLAS") else list(CANDIDATES)
    paths += sorted(glob.glob("/usr/lib/*/openblas*/libopenblas.so.0"))
    for p in paths:
        if os.path.exists(p):
            try:
                ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            loaded = p
            return p
    return None
