import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import settings  # noqa: E402

# the package loads OpenBLAS before MLX (mlx_vgb/_blas.py): import it before any test module
# imports mlx itself, so every test runs on the BLAS users get, whatever the collection order
import mlx_vgb  # noqa: E402, F401

# Property tests draw their examples from a fixed seed: CI runs are reproducible, and a failure
# seen once is seen again (hypothesis' own database would make runs depend on earlier runs).
settings.register_profile("mlx-vgb", derandomize=True, database=None, print_blob=True)
settings.load_profile("mlx-vgb")


import pytest  # noqa: E402

DYCK_ASSETS = Path(__file__).resolve().parent.parent / "mlx_vgb" / "assets" / "dyck"


@pytest.fixture(scope="module")
def shipped():
    """The shipped Dyck LM and its value head: (model, tokenizer, config, head, backbone)."""
    if not (DYCK_ASSETS / "lm" / "model.safetensors").exists():
        pytest.skip("shipped Dyck assets not built (python -m mlx_vgb.tasks.train_dyck_lm)")
    from mlx_lm import load

    from mlx_vgb.verifier_format import load_verifier

    model, tok = load(str(DYCK_ASSETS / "lm"))
    cfg, head, backbone = load_verifier(DYCK_ASSETS / "verifier")
    return model, tok, cfg, head, backbone
