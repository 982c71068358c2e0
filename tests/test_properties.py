"""Property-based tests (hypothesis) of the sampler's invariants under random walks."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import LOGPROB_TOL, full_forward_logprobs, logprob_error, tiny_llama

from mlx_vgb import (
    VGB,
    ActionLevelRS,
    Append,
    Backtrack,
    Blocks,
    Done,
    Enumerate,
    FunctionVerifier,
    Rejection,
    Tokens,
    Trace,
    toy,
)
from mlx_vgb.children import SelfNormalized
from mlx_vgb.lm import MLXLanguageModel

CHOICES = {
    "enumerate": Enumerate(),
    "self-normalized": SelfNormalized(3),
    "rejection": Rejection(3),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vocab=st.integers(2, 4),
    horizon=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    block=st.integers(1, 3),
    choice=st.sampled_from(sorted(CHOICES)),
    drift=st.sampled_from([1.0, 0.6, 0.3]),
    lazy=st.booleans(),
    eos=st.booleans(),
    eps=st.floats(-0.5, 2.0),
)
def test_walk_invariants(vocab, horizon, seed, block, choice, drift, lazy, eos, eps):
    lm = toy.TabularLM.random(
        vocab, seed=seed, eos_token_id=0 if eos else None, eos_prob=0.2 if eos else 0.0
    )
    tilt = lambda y: 1.0 if sum(y) % 3 else 0.2  # noqa: E731
    v = toy.PerturbedValue(lm, tilt, horizon, eps=eps, action=vocab - 1)
    if choice == "enumerate":
        block = 1
    actions = Tokens() if block == 1 else Blocks(block)
    sampler = VGB(
        horizon=horizon,
        actions=actions,
        choice=CHOICES[choice],
        drift=drift,
        lazy=lazy,
        max_steps=2000,
    )
    trace, appends, backs = Trace(), 0, 0
    run = sampler.start(lm, v, seed=seed)
    for ev in run:
        if isinstance(ev, Done):
            r = ev.result
            break
        trace.apply(ev)
        appends += isinstance(ev, Append)
        backs += isinstance(ev, Backtrack)
        assert ev.length == len(trace.tokens)  # events carry the current length
    # the replayed events end on the result's tokens
    assert tuple(trace.tokens) == r.tokens
    s = r.stats
    jump = 0 if r.reached_leaf else 2  # unfinished: at most two events jump to the best effort
    assert s.steps + jump >= appends + backs
    assert s.backtracks + s.restarts + jump >= backs
    # the prefix store: memo counts match the accounting, tree links are consistent
    tree = run.tree
    nodes, stack = [], [tree.root]
    while stack:
        n = stack.pop()
        nodes.append(n)
        for t, c in n.next.items():
            assert c.prev is n and c.tokens == n.tokens + (t,)
            assert c.is_leaf == (len(c.tokens) >= horizon or (eos and t == 0))
            stack.append(c)
    assert len(nodes) == s.nodes
    assert sum(n.dist is not None for n in nodes) == s.forward_tokens == len(lm.prefixes_seen)
    assert sum(n.log_value is not None for n in nodes) == s.verifier_evals
    for n in nodes:
        if n.depth > 0:
            assert n.parent is not None and n.parent.depth == n.depth - 1
            assert n.tokens[: len(n.parent.tokens)] == n.parent.tokens
    if r.reached_leaf:
        assert len(r.tokens) == horizon or r.tokens[-1] == 0
    else:  # unfinished: the best effort is the deepest node visited, and says why
        assert r.finish_reason in ("budget", "dead-end")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 6),
            st.lists(st.integers(1, 40), min_size=1, max_size=4),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_kv_cache_follows_any_request_sequence(ops):
    model = tiny_llama(seed=4)
    lm = MLXLanguageModel(model, eos_token_ids=[0])
    prompt = (3, 1, 4)
    lm.begin(prompt)
    path: tuple = ()
    for cut, ext, k in ops:
        path = path[: max(0, len(path) - cut)]  # backtrack
        rows = [path + tuple(ext[:-1]) + (ext[-1] + i,) for i in range(k)]
        got = lm.logprobs(rows)
        for r, g in zip(rows, got):
            assert logprob_error(g, full_forward_logprobs(model, prompt + r)) < LOGPROB_TOL
        # the trunk cache offset equals the length of the prefix it claims to hold
        for layer in lm._trunk:
            assert layer.offset == len(lm._trunk_tokens)
        path = rows[0]


def test_action_rs_never_moves_up():
    lm = toy.TabularLM.random(3, seed=1)
    v = toy.ExactValue(lm, lambda y: 1.0 if y[-1] != 2 else 0.0, 5)
    for seed in range(20):
        evs = list(ActionLevelRS(horizon=5, choice=Enumerate()).stream(lm, v, seed=seed))
        assert not any(isinstance(e, Backtrack) for e in evs)
        assert evs[-1].result.tokens[-1] != 2


def test_two_interleaved_runs_of_one_sampler_keep_their_own_state():
    sampler = VGB(horizon=5, choice=Rejection(3))
    lms = [toy.TabularLM.random(3, seed=s) for s in (1, 2)]
    vs = [toy.ExactValue(lm, lambda y: 1.0 if y[-1] != 2 else 0.1, 5) for lm in lms]
    runs = [sampler.start(lm, v, seed=i) for i, (lm, v) in enumerate(zip(lms, vs))]
    results = [None, None]
    while None in results:
        for i, run in enumerate(runs):
            if results[i] is None:
                ev = next(iter(run))
                if isinstance(ev, Done):
                    results[i] = ev.result
                else:
                    assert ev.step == run.stats.steps  # this run's own counter
    for i, (lm, v) in enumerate(zip(lms, vs)):
        alone = sampler.sample(toy.TabularLM.random(3, seed=(1, 2)[i]), v, seed=i)
        assert results[i].tokens == alone.tokens and results[i].stats.steps == alone.stats.steps
        assert results[i].stats is runs[i].stats
    assert results[0].stats.steps != results[1].stats.steps


def test_root_retries_exhausted_end_unfinished_with_the_best_text_not_an_exception():
    # only responses through token 2 (pi_ref 0.02) have V^ > 0, and every one dies at depth 3:
    # the walk goes down, is forced back to the root, where K = 2 draws miss token 2 (p = 0.96)
    # max_root_retries times in a row. The run keeps its deepest text and says "dead-end".
    lm = toy.TabularLM(3, lambda p: [0.96, 0.02, 0.02])
    v = FunctionVerifier(lambda p: 1.0 if p[:1] == (2,) and len(p) <= 2 else 0.0)
    reasons = []
    for seed in range(6):
        trace = Trace()
        for ev in VGB(horizon=6, choice=SelfNormalized(2), max_steps=20_000).stream(
            lm, v, seed=seed
        ):
            if isinstance(ev, Done):
                r = ev.result
            else:
                trace.apply(ev)
        assert not r.reached_leaf and r.tilt is None
        assert tuple(trace.tokens) == r.tokens  # the events end on the best effort
        if r.stats.backtracks:  # it went down before the root's draws ran dry
            assert len(r.tokens) == 2 and r.tokens[0] == 2  # the deepest text, kept
            reasons.append(r.finish_reason)
    assert "dead-end" in reasons


def test_rejection_falls_back_once_on_a_hopeless_scale_and_says_so():
    # V^ = 1e-9 inside, tau = 1: rejection against bound 1 would need ~1e9 proposals
    lm = toy.TabularLM.uniform(3)
    v = FunctionVerifier(lambda p: 1e-9, lambda y: 1.0)
    r = VGB(horizon=5, choice=Rejection(8)).sample(lm, v, seed=0)
    assert r.reached_leaf and r.stats.inexact_steps == 1
    assert r.stats.proposals < 64 + 8 * r.stats.steps  # one long step, then K per step
    # zero weights are dead children, not a hopeless scale: no fallback for a 0/1 verifier
    v01 = FunctionVerifier(lambda p: 0.0 if p[-1:] == (0,) else 1.0)
    r = VGB(horizon=5, choice=Rejection(8)).sample(lm, v01, seed=0)
    assert r.reached_leaf and r.stats.inexact_steps == 0 and 0 not in r.tokens


def test_choice_rules_by_name():
    from mlx_vgb import CHOICES, ConfigError, make_choice

    assert set(CHOICES) == {"rejection", "enumerate", "self-normalized"}
    assert make_choice("rejection", 4) == Rejection(4)
    assert make_choice("self-normalized", 3) == SelfNormalized(3)
    assert make_choice("enumerate", 5) == Enumerate()
    assert make_choice() == Rejection(8) and Rejection(8).exact and not SelfNormalized(8).exact
    with pytest.raises(ConfigError, match="rejection.*enumerate.*self-normalized"):
        make_choice("candidates", 8)
