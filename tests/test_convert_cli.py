"""`mlx-vgb convert` end to end on tiny checkpoints, and the default-model cache."""

import json
import os
import subprocess
import sys
import threading

import pytest
from test_convert_gguf import T, write_gguf

from mlx_vgb.convert.cli import main
from mlx_vgb.convert.output import OutputExistsError, atomic_output
from mlx_vgb.models import cached_conversion, is_complete


def test_cli_converts_gguf_and_refuses_existing_output_without_force(tmp_path, capsys):
    write_gguf(tmp_path / "m.gguf", qtype=T.Q4_0)
    main(["--gguf", str(tmp_path / "m.gguf"), "--mlx-path", str(tmp_path / "out")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]["bits"] == 4

    with pytest.raises(SystemExit) as e:
        main(["--gguf", str(tmp_path / "m.gguf"), "--mlx-path", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    main(
        [
            "--gguf",
            str(tmp_path / "m.gguf"),
            "--mlx-path",
            str(tmp_path / "out"),
            "--force",
            "--dtype",
            "float32",
        ]
    )


def test_cli_reports_unsupported_input_in_one_line(tmp_path):
    write_gguf(tmp_path / "m.gguf", arch="gpt2")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_vgb.cli",
            "convert",
            "--gguf",
            str(tmp_path / "m.gguf"),
            "--mlx-path",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        check=False,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0  # one message, no traceback
    assert "architecture 'gpt2' is not supported" in r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_needs_exactly_one_source(tmp_path):
    with pytest.raises(SystemExit):
        main(["--mlx-path", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        main(["--gguf", "a.gguf", "--hf-path", "b"])


def test_second_writer_of_a_folder_loses_cleanly(tmp_path):
    with atomic_output(tmp_path / "out") as a:
        (a / "who").write_text("a")
        with pytest.raises(OutputExistsError, match="another writer"):  # noqa: SIM117
            with atomic_output(tmp_path / "out") as b:
                (b / "who").write_text("b")
                (tmp_path / "out").mkdir()  # a rival publishes first
                (tmp_path / "out" / "who").write_text("rival")
        (tmp_path / "out" / "who").unlink()
        (tmp_path / "out").rmdir()
    assert (tmp_path / "out" / "who").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cached_conversion_survives_racing_threads_and_repairs_incomplete_folder(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    target = tmp_path / "cache" / "models" / "tiny"
    results, errors = [], []

    def convert():
        try:
            results.append(cached_conversion(tmp_path / "m.gguf", target))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=convert) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [target] * 3 and is_complete(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny"]

    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert cached_conversion(tmp_path / "m.gguf", target) == target  # cached: not rewritten
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime

    (target / "tokenizer.json").unlink()
    assert not is_complete(target)
    cached_conversion(tmp_path / "m.gguf", target)
    assert is_complete(target)


def test_temp_folder_of_a_killed_writer_is_removed_by_the_next_one(tmp_path):
    from mlx_vgb.convert.output import remove_stale_temps

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".out.tmp-{dead.stdout.strip()}-abc"  # a writer killed mid-way
    live = tmp_path / f".out.tmp-{os.getpid()}-def"  # a writer still running
    other = tmp_path / f".outer.tmp-{dead.stdout.strip()}-x"  # another output's
    for d in (stale, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    write_gguf(tmp_path / "m.gguf")
    main(["--gguf", str(tmp_path / "m.gguf"), "--mlx-path", str(tmp_path / "out")])
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "out") == []


def test_cli_q_bits_requantizes_what_mlx_cannot_keep(tmp_path, capsys):
    write_gguf(tmp_path / "m.gguf", qtype=T.Q5_0)  # Q5_0 layers, Q5_0 embedding
    main(["--gguf", str(tmp_path / "m.gguf"), "--mlx-path", str(tmp_path / "q"), "--q-bits", "8"])
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    main(["--gguf", str(tmp_path / "m.gguf"), "--mlx-path", str(tmp_path / "f"), "-d"])
    assert "quantization" not in json.loads((tmp_path / "f" / "config.json").read_text())
