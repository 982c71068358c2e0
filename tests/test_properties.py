"""Property-based tests (hypothesis) of the sampler's invariants under random walks."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import LOGPROB_TOL, full_forward_logprobs, logprob_error, tiny_llama

from mlx_vgb import (
    VGB, ActionLevelRS, Append, Backtrack, Blocks, Candidates, Done, Enumerate, Rejection,
    Tokens, Trace, toy,
)
from mlx_vgb.lm import MLXLanguageModel

CHOICES = {"enumerate": Enumerate(), "candidates": Candidates(3), "rejection": Rejection()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vocab=st.integers(2, 4), horizon=st.integers(1, 6), seed=st.integers(0, 10_000),
       block=st.integers(1, 3), choice=st.sampled_from(sorted(CHOICES)),
       drift=st.sampled_from([1.0, 0.6, 0.3]), lazy=st.booleans(), eos=st.booleans(),
       eps=st.floats(-0.5, 2.0))
def test_walk_invariants(vocab, horizon, seed, block, choice, drift, lazy, eos, eps):
    lm = toy.TabularLM.random(vocab, seed=seed, eos_token_id=0 if eos else None,
                              eos_prob=0.2 if eos else 0.0)
    tilt = lambda y: 1.0 if sum(y) % 3 else 0.2  # noqa: E731
    v = toy.PerturbedValue(lm, tilt, horizon, eps=eps, action=vocab - 1)
    if choice == "enumerate":
        block = 1
    actions = Tokens() if block == 1 else Blocks(block)
    sampler = VGB(horizon=horizon, actions=actions, choice=CHOICES[choice], drift=drift,
                  lazy=lazy, max_steps=2000)
    trace, appends, backs = Trace(), 0, 0
    for ev in sampler.stream(lm, v, seed=seed):
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
    assert s.steps >= appends + backs
    assert s.backtracks + s.restarts >= backs
    # the prefix store: memo counts match the accounting, tree links are consistent
    tree = sampler.search.tree
    nodes, stack = [], [tree.root]
    while stack:
        n = stack.pop()
        nodes.append(n)
        for t, c in n.children.items():
            assert c.parent is n and c.tokens == n.tokens + (t,)
            assert c.is_leaf == (len(c.tokens) >= horizon or (eos and t == 0))
            stack.append(c)
    assert len(nodes) == s.nodes
    assert sum(n.dist is not None for n in nodes) == s.forward_tokens == len(lm.prefixes_seen)
    assert sum(n.value is not None for n in nodes) == s.verifier_evals
    for n in nodes:
        if n.depth > 0:
            assert n.up is not None and n.up.depth == n.depth - 1
            assert n.tokens[: len(n.up.tokens)] == n.up.tokens
    if r.reached_leaf:
        assert len(r.tokens) == horizon or r.tokens[-1] == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 6), st.lists(st.integers(1, 40), min_size=1,
                                                          max_size=4), st.integers(1, 3)),
                    min_size=1, max_size=8))
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
