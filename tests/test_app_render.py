"""The web app's pure parts: the walk view (struck-through erasures, clean final text), the depth
picture, the settings form -> API arguments, and the CLI flags. No server, no model."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlx_vgb.app.cli import setup_arg_parser
from mlx_vgb.app.examples import examples, human_eval_problem, is_even_test_cases
from mlx_vgb.app.render import WalkView, depth_svg, plot_points, stats_html, text_html
from mlx_vgb.app.settings import RunSettings
from mlx_vgb.errors import ConfigError
from mlx_vgb.results import Append, Backtrack, Done, SampleResult, SampleStats


@dataclass
class Resp:
    text: str
    event: object
    depth: int
    step: int
    stats: SampleStats = None
    tokens_per_s: float = 10.0
    finish_reason: str = None
    result: SampleResult = None


def append(text, depth, step):
    return Resp(text, Append((1,), depth, len(text), step), depth, step, SampleStats(steps=step))


def back(text, depth, step):
    return Resp(text, Backtrack(1, depth, len(text), step), depth, step, SampleStats(steps=step))


def done(text, leaf=True):
    st = SampleStats(steps=9, backtracks=2, forward_tokens=7, verifier_evals=12, max_depth=3)
    r = SampleResult((1, 2), leaf, "stop", 1.0, st, "vgb", 0, text)
    return Resp(text, Done(r), 3, 9, st, 12.5, "stop", r)


def kept(view):
    return "".join(s.text for s in view.segments if not s.erased)


def struck(html_text):
    return re.findall(r"<del[^>]*>(.*?)</del>", html_text, re.DOTALL)


def test_backtrack_strikes_the_erased_span_and_keeps_the_clean_text():
    v = WalkView()
    for r in [
        append("The", 1, 1),
        append("The cat", 2, 2),
        back("The", 1, 3),
        append("The dog", 2, 4),
    ]:
        v.update(r)
    assert v.text == "The dog" == kept(v)
    html_text = text_html(v)
    assert struck(html_text) == [" cat"]
    assert html_text.index("cat") < html_text.index(" dog")
    assert v.backtrack_events == 1 and v.erased_chars == 4


def test_nested_backtracks_merge_into_one_struck_span_before_the_new_text():
    v = WalkView()
    for r in [
        append("A", 1, 1),
        append("A B", 2, 2),
        append("A B C", 3, 3),
        back("A B", 2, 4),
        back("A", 1, 5),
        append("A D", 2, 6),
        done("A D"),
    ]:
        v.update(r)
    assert struck(text_html(v)) == [" B C"]
    assert v.text == "A D" and v.done and v.reached_leaf
    assert "vgb-cursor" not in text_html(v)  # finished: no cursor
    assert struck(text_html(v, show_erased=False)) == []


def test_an_append_that_redecodes_earlier_characters_is_not_shown_as_erased():
    v = WalkView()
    v.update(append("caf\ufffd", 1, 1))  # half a UTF-8 character
    v.update(append("café", 2, 2))
    assert v.text == "café" and struck(text_html(v)) == []


def test_text_is_html_escaped():
    v = WalkView()
    v.update(append("<b>x</b>", 1, 1))
    v.update(back("<b>", 1, 2))
    out = text_html(v)
    assert "<b>" not in out and "&lt;b&gt;" in out and struck(out) == ["x&lt;/b&gt;"]


def test_depth_picture_draws_every_drop():
    v = WalkView()
    seq = [
        append("a", 1, 1),
        append("ab", 2, 2),
        back("a", 1, 3),
        append("ac", 2, 4),
        append("acd", 3, 5),
        back("ac", 2, 6),
    ]
    for r in seq:
        v.update(r)
    svg = depth_svg(v)
    assert v.points == [
        (1, 1, False),
        (2, 2, False),
        (3, 1, True),
        (4, 2, False),
        (5, 3, False),
        (6, 2, True),
    ]
    assert svg.count("<circle") == 2 and 'data-backtracks="2"' in svg


def test_plot_points_thins_long_walks_but_keeps_the_lowest_points():
    pts = [(i, 50 + (i % 7), False) for i in range(10_000)]
    pts[5000] = (5000, 0, True)  # one deep drop
    out = plot_points(pts, limit=300)
    assert len(out) <= 320 and (5000, 0, True) in out


def test_stats_panel_shows_the_run_numbers():
    v = WalkView(label="vgb")
    v.update(append("a", 1, 1))
    assert "running" in stats_html(v)
    v.update(done("a"))
    out = stats_html(v)
    for want in ("complete (no verifier)", ">9<", ">2<", ">7<", "12.5", "reached leaf", ">yes<"):
        assert want in out, want


def test_settings_make_typed_verifier_settings_that_round_trip_through_the_cli_grammar():
    from mlx_vgb.registry import (
        ForbidSpec,
        FunctionSpec,
        HeadSpec,
        NoLetterSpec,
        RegexSpec,
        UnitTestsSpec,
        parse_verifier,
    )

    s = RunSettings(prompt="x", verifier="no-letter", letter="z", alpha=0.5)
    assert s.verifier_settings() == NoLetterSpec("z", 0.5)
    assert RunSettings(verifier="regex", pattern="a+").verifier_settings() == RegexSpec("a+")
    # spaces count: "a " bans "a " only, not every "a"
    assert RunSettings(
        verifier="forbid", words="cat | dog\nbird"
    ).verifier_settings() == ForbidSpec(("cat ", " dog", "bird"))
    # the tests travel as text, and are saved to a real file the command line names
    spec = RunSettings(verifier="unit-tests", tests="assert f()").verifier_settings()
    assert isinstance(spec, UnitTestsSpec) and spec.tests == "assert f()"
    assert Path(spec.source).read_text() == "assert f()"
    assert RunSettings(
        verifier="python function", function="m.n:f"
    ).verifier_settings() == FunctionSpec("m.n:f")
    assert RunSettings(verifier="head", verifier_path="/v").verifier_settings() == HeadSpec("/v")
    for spec in (
        NoLetterSpec("z", 0.5),
        RegexSpec("a+"),
        ForbidSpec(("cat", "dog")),
        FunctionSpec("m.n:f"),
        HeadSpec("/v"),
    ):
        assert parse_verifier(spec.to_string()) == spec


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(prompt="  "), "prompt is empty"),
        (dict(prompt="x", candidates=0), "candidates"),
        (dict(prompt="x", max_tokens=0), "max tokens"),
        (dict(prompt="x", block="lines"), "block"),
        (dict(prompt="x", drift=0), "drift"),
        (dict(prompt="x", temp=-1), "temperature"),
        (dict(prompt="x", verifier="no-letter", letter="ab"), "one letter"),
        (dict(prompt="x", verifier="regex", pattern=""), "pattern"),
        (dict(prompt="x", verifier="unit-tests", tests=" "), "asserts"),
        (dict(prompt="x", generator="local MLX folder", model_path="/no/such/dir"), "no folder"),
    ],
)
def test_bad_settings_raise_config_errors_with_a_hint(kw, words):
    s = RunSettings(**kw)
    with pytest.raises(ConfigError, match="(?i)" + words):
        s.check()
        s.verifier_settings()
        s.model_spec(None)


def test_block_setting():
    assert RunSettings(block="token").block_value() is None
    assert RunSettings(block="line").block_value() == "line"
    assert RunSettings(block="4").block_value() == 4


def test_cli_binds_localhost_unless_asked_to_share_on_the_lan():
    from mlx_vgb.app.cli import launch_kwargs

    p = setup_arg_parser()
    assert launch_kwargs(p.parse_args([]))["server_name"] == "127.0.0.1"
    assert launch_kwargs(p.parse_args(["--share-lan"]))["server_name"] == "0.0.0.0"
    kw = launch_kwargs(p.parse_args(["--host", "10.0.0.2", "--port", "9000"]))
    assert (kw["server_name"], kw["server_port"], kw["share"]) == ("10.0.0.2", 9000, False)
    a = p.parse_args(["--model", "/m", "--max-concurrent", "2"])
    assert (a.model, a.max_concurrent) == ("/m", 2)


def test_presets_cover_letters_regex_unit_tests_human_eval_and_the_code_head():
    titles = " ".join(e["title"] for e in examples())
    for task in ("Letters", "Regex", "unit tests", "HumanEval", "trained code head"):
        assert task in titles, task
    # defaults that finish in seconds: a short horizon and a step budget
    assert all(e["max_tokens"] <= 192 and 0 < e["max_steps"] <= 1000 for e in examples())
    _, prompt, tests = human_eval_problem()
    assert "def has_close_elements" in prompt and tests.rstrip().endswith(
        "check(has_close_elements)"
    )
    for e in examples():
        RunSettings(**{k: v for k, v in e.items() if k != "title"}).check()


def test_test_case_verifier_accepts_true_asserts_only():
    assert is_even_test_cases("```python\nassert is_even(2)\n", False) == 1.0
    assert is_even_test_cases("```python\nprint(1)\n", False) == 0.0
    assert (
        is_even_test_cases("```python\nassert is_even(2)\nassert not is_even(3)\n```", True) == 1.0
    )
    assert is_even_test_cases("```python\nassert is_even(3)\n```", True) == 0.0


def test_every_run_gets_a_verdict_from_the_selected_verifier():
    def finished(tilt, leaf=True, reason="stop", verifier="no-letter:e,alpha=0.3"):
        v = WalkView(label="plain", verifier=verifier)
        st = SampleStats(steps=3)
        r = SampleResult((1, 2), leaf, reason, tilt, st, "plain", 0, "ab")
        v.update(Resp("ab", Done(r), 2, 3, st, 1.0, reason, r))
        return v.verdict()[0]

    assert finished(1.0) == "passes"
    assert finished(0.0) == "fails"  # plain with an 'e' fails, whatever the sampler
    assert finished(None, leaf=False, reason="budget") == "unfinished"
    assert finished(0.5, reason="rejected") == "fails"
    assert finished(1.0, verifier="none") == "complete"


def test_explored_tree_counts_visits_and_backtracks_and_marks_the_path():
    from mlx_vgb.app.explore import ExploredTree, step_html, tree_html
    from mlx_vgb.trace import StepOption, StepTrace

    t = ExploredTree()
    t.on_append([1])
    t.on_append([2])
    t.on_backtrack(1)  # back to (1,)
    t.on_append([3])
    t.on_trace(
        StepTrace(
            4,
            (1,),
            1,
            0.0,
            (
                StepOption((1, 3), -0.5, -0.5),
                StepOption((1, 4), float("-inf"), float("-inf")),
                StepOption((), None, 0.0, up=True),
            ),
            (1, 3),
            "child",
            "SelfNormalized",
        )
    )
    assert t.nodes[(1,)].visits == 2 and t.nodes[(1, 2)].ups == 1
    assert t.path() == [(), (1,), (1, 3)]
    assert (1, 4) in t.nodes and t.nodes[(1, 4)].visits == 0  # valued, never visited
    out = tree_html(t, lambda ids: "".join(chr(96 + i) for i in ids), "vgb")
    assert out.count("vgb-onpath") == 3 and "1↑" in out and 'data-nodes="5"' in out
    step = step_html(t, lambda ids: "".join(chr(96 + i) for i in ids), 4)
    assert 'data-move="child"' in step and "◀ drawn" in step and "↑ parent" in step


def test_an_uploaded_verifier_module_is_used_and_reloaded_when_edited(tmp_path, monkeypatch):
    import os
    import time

    from mlx_vgb.app.userfiles import reload_if_changed, save_verifier_module
    from mlx_vgb.verifiers import CallableVerifier

    monkeypatch.setenv("MLX_VGB_HOME", str(tmp_path))
    spec = save_verifier_module("def verify(text, complete):\n    return 0.25\n", "mine.py")
    assert spec == "mine:verify"
    assert CallableVerifier.from_spec(spec).value_text("x", 1) == 0.25
    reload_if_changed(spec)
    path = tmp_path / "app" / "modules" / "mine.py"
    path.write_text("def verify(text, complete):\n    return 0.75\n")
    later = time.time() + 5
    os.utime(path, (later, later))
    reload_if_changed(spec)  # edited since imported: imported again, no restart
    assert CallableVerifier.from_spec(spec).value_text("x", 1) == 0.75
    with pytest.raises(ConfigError, match="Verifier module"):
        save_verifier_module("x = 1\n", "none.py")


def test_the_command_line_of_a_run_sets_what_the_run_sets():
    import shlex

    from mlx_vgb.app.settings import command_line
    from mlx_vgb.generate import _generation_kwargs, setup_arg_parser
    from mlx_vgb.registry import CodeHeadSpec, parse_block, parse_verifier

    s = RunSettings(
        prompt="Write f.",
        verifier="regex",
        pattern="[a-z]+",
        block="line",
        drift=0.5,
        temp=0.7,
        top_p=0.9,
        candidates=2,
        max_steps=40,
        system_prompt="Be brief.",
        prefill="```python\ndef f():\n",
    )
    cmd = shlex.split(command_line(s, "/models/m"))
    assert cmd[:4] == ["mlx-vgb", "generate", "--model", "/models/m"]
    a = setup_arg_parser().parse_args(cmd[2:])
    kw = _generation_kwargs(a, parse_block(a.block), parse_verifier(a.verifier))
    want = s.stream_kwargs(s.sampler, s.verifier_settings())
    for k in ("verifier", "max_tokens", "temp", "top_p", "seed", "block", "candidates"):
        assert kw[k] == want[k], k
    for k in ("max_steps", "drift", "system_prompt", "prefill_response"):
        assert kw[k] == want[k], k
    assert want["prefill_response"] == "```python\ndef f():\n" and a.prompt == "Write f."
    assert isinstance(RunSettings(verifier="code-head").verifier_settings(), CodeHeadSpec)
