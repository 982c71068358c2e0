"""The MLX adapter's KV cache under backtracking: same numbers as a fresh forward, nothing
recomputed, batched candidates equal to one-at-a-time."""

import os

import numpy as np
import pytest
from tiny_models import (
    LOGPROB_TOL,
    TINY_FLOAT32_ERROR,
    WRONG_ROW,
    float32_error,
    full_forward_logprobs,
    logprob_error,
    logprob_tolerance,
    tiny_llama,
)

from mlx_vgb import VGB, Blocks, Candidates, FunctionVerifier
from mlx_vgb.lm import MLXLanguageModel

TOL = LOGPROB_TOL  # for the SSM model, whose float64 forward is not measured


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=1)


PROMPT = (1, 5, 9, 2)


def check(lm, model, prefixes):
    got = lm.logprobs(prefixes)
    tol = logprob_tolerance(model, [PROMPT + tuple(p) for p in prefixes])
    for p, row in zip(prefixes, got):
        want = full_forward_logprobs(model, PROMPT + tuple(p))
        assert logprob_error(row, want) < tol, p


def test_extend_backtrack_extend_matches_fresh_forward(model):
    lm = MLXLanguageModel(model, eos_token_ids=[0])
    lm.begin(PROMPT)
    check(lm, model, [()])
    check(lm, model, [(3, 4, 5, 6)])  # extend
    check(lm, model, [(3, 4)])  # backtrack 2 (logits at a trimmed node: one token rerun)
    check(lm, model, [(3, 4, 7, 8, 9)])  # extend on another branch
    check(lm, model, [(3,)])
    check(lm, model, [(11, 12, 13)])


def test_batched_candidates_equal_one_at_a_time(model):
    lm = MLXLanguageModel(model, eos_token_ids=[0])
    lm.begin(PROMPT)
    lm.logprobs([(3, 4)])
    rows = [(3, 4, 10), (3, 4, 11), (3, 4, 12), (3, 4, 13)]
    batched = lm.logprobs(rows)
    rows2 = [r + (20,) for r in rows]  # extend each row by one token: gathered from the branch
    batched2 = lm.logprobs(rows2)
    one = MLXLanguageModel(model, eos_token_ids=[0])
    one.begin(PROMPT)
    singles = np.stack([one.logprobs([r])[0] for r in rows])
    singles2 = np.stack([one.logprobs([r])[0] for r in rows2])
    tol = logprob_tolerance(model, [PROMPT + r for r in rows + rows2])
    assert logprob_error(batched, singles) < tol
    assert logprob_error(batched2, singles2) < tol
    assert lm.recomputed_tokens == 0


def test_tolerance_model_keeps_a_wrong_row_far_outside(model):
    rows = [PROMPT + (3, 4, t) for t in (10, 11, 12, 13)]
    tol = logprob_tolerance(model, rows)
    assert tol <= WRONG_ROW / 10
    for r in rows:  # the cache errors parity tests exist to catch: another token, one position
        right = full_forward_logprobs(model, r)
        assert logprob_error(full_forward_logprobs(model, r[:-1] + (r[-1] + 1,)), right) > WRONG_ROW
        assert logprob_error(full_forward_logprobs(model, r[:-1]), right) > WRONG_ROW


def test_tiny_models_round_off_is_within_the_stated_scale():
    """LOGPROB_TOL (for tests that do not measure their own scale) rests on this bound."""
    rng = np.random.default_rng(0)
    for seed, prompt in ((1, PROMPT), (4, (3, 1, 4))):
        m = tiny_llama(seed=seed)
        seqs = [prompt + tuple(rng.integers(1, 40, rng.integers(1, 11)).tolist()) for _ in range(8)]
        assert float32_error(m, seqs) <= TINY_FLOAT32_ERROR


def test_openblas_is_in_use_unless_opted_out():
    """The parity tests must run on the BLAS the package loads (mlx_vgb/_blas.py)."""
    from mlx_vgb import _blas

    present = any(os.path.exists(p) for p in _blas.CANDIDATES)
    if os.environ.get("MLX_VGB_NO_OPENBLAS"):
        assert _blas.loaded is None
    elif present and not __import__("sys").platform == "darwin":
        assert _blas.loaded is not None


def test_malloc_is_tuned_on_linux_unless_opted_out():
    import platform
    import sys

    from mlx_vgb import _blas

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    if glibc and not os.environ.get("MLX_VGB_NO_MALLOPT"):
        assert _blas.malloc_tuned
    else:
        assert not _blas.malloc_tuned


def test_walk_with_backtracks_recomputes_no_token(model):
    lm = MLXLanguageModel(model, eos_token_ids=[0])
    # a verifier that makes the walk backtrack often: odd tokens are bad
    ver = FunctionVerifier(lambda p: 0.2 if sum(p) % 2 else 1.0)
    r = VGB(horizon=12, actions=Blocks(3), choice=Candidates(4)).sample(lm, ver, PROMPT, seed=3)
    assert r.reached_leaf
    assert r.stats.backtracks >= 2
    assert lm.recomputed_tokens == 0
    # every pi_ref the sampler asked for was a forward token, plus one per trimmed node rerun
    assert lm.positions_computed >= r.stats.forward_tokens


def test_branch_memory_cap_costs_recomputation_never_a_result(model):
    """Kept branch caches are capped in bytes (oldest dropped): under a cap that holds one
    branch the walk gives the same tokens as uncapped, only recomputing more."""
    ver = FunctionVerifier(lambda p: 0.2 if sum(p) % 2 else 1.0)
    smp = VGB(horizon=12, actions=Blocks(3), choice=Candidates(4))
    outs, kept = [], []
    for cap in (128 << 20, 1):
        lm = MLXLanguageModel(model, eos_token_ids=[0], max_branch_bytes=cap)
        seen = []
        keep = lm._keep_branch

        def spy(b, keep=keep, lm=lm, seen=seen):
            keep(b)
            seen.append(len(lm._branches))

        lm._keep_branch = spy
        r = smp.sample(lm, ver, PROMPT, seed=3)
        outs.append((r.tokens, r.stats.forward_tokens, r.stats.backtracks))
        kept.append((max(seen), lm.recomputed_tokens))
    assert outs[0] == outs[1]
    assert kept[0][0] >= 2 and kept[1][0] == 1  # the cap held; uncapped kept several
    assert kept[1][1] > kept[0][1] == 0  # recomputed instead


def test_value_head_gives_value_from_the_same_forward(model):
    import mlx.core as mx

    from mlx_vgb.verifier_format import HeadConfig, ValueHead

    head = ValueHead(HeadConfig(type="mlp", dims=[32, 8, 1], activation="relu", output="sigmoid"))
    mx.eval(head.parameters())
    lm = MLXLanguageModel(model, eos_token_ids=[0], value_head=head)
    from mlx_vgb.model_verifier import ValueHeadVerifier

    ver = ValueHeadVerifier(lm, tilt=lambda prompt, y: 1.0)
    r = VGB(horizon=9, actions=Blocks(3), choice=Candidates(3)).sample(lm, ver, PROMPT, seed=0)
    assert r.reached_leaf and lm.recomputed_tokens == 0
    # the values equal the head applied to a fresh forward's last hidden state
    lm2 = MLXLanguageModel(model, eos_token_ids=[0], value_head=head)
    lm2.begin(PROMPT)
    pref = r.tokens[:3]
    v = lm2.values([pref])[0]
    h = model.model(mx.array([list(PROMPT + pref)]))[0, -1]
    assert abs(v - float(head(h))) < 1e-4
    # a value call leaves the log-probs of those prefixes ready: no extra forward
    calls = lm2.forward_calls
    lm2.logprobs([pref])
    assert lm2.forward_calls == calls


def test_rotating_cache_falls_back_to_snapshots(model):
    # a rotating window smaller than prompt + prefix cannot be trimmed once it wrapped
    lm = MLXLanguageModel(model, eos_token_ids=[0], max_kv_size=6)
    lm.begin(PROMPT)
    lm.logprobs([(3, 4, 5, 6)])  # 8 tokens > window: the cache has rotated
    assert not __import__("mlx_lm.models.cache", fromlist=["x"]).can_trim_prompt_cache(lm._trunk)
    ref = MLXLanguageModel(model, eos_token_ids=[0], max_kv_size=6)
    ref.begin(PROMPT)
    want = ref.logprobs([(3, 7)])[0]
    got = lm.logprobs([(3, 7)])[0]  # backtrack: restore the snapshot taken at (3,)
    tol = logprob_tolerance(model, [PROMPT + (3, 7), PROMPT + (2,)])
    assert logprob_error(got, want) < tol
    assert lm.recomputed_tokens == 0
    got = lm.logprobs([(2,)])[0]  # the snapshot after the prompt
    assert logprob_error(got, full_forward_logprobs(model, PROMPT + (2,))) < tol
    assert lm.recomputed_tokens == 0


def test_context_overflow_is_a_clear_error(model):
    from mlx_vgb.errors import ConfigError

    small = tiny_llama(seed=1, context=8)
    lm = MLXLanguageModel(small, eos_token_ids=[0])
    with pytest.raises(ConfigError, match="context"):
        lm.begin(tuple(range(1, 10)))
    lm.begin(PROMPT)
    with pytest.raises(ConfigError, match="lower max tokens"):
        lm.logprobs([(1, 2, 3, 4, 5)])


def tiny_mamba():
    import mlx.core as mx
    from mlx_lm.models import mamba

    mx.random.seed(0)
    args = mamba.ModelArgs(
        model_type="mamba",
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        state_size=4,
        num_hidden_layers=2,
        conv_kernel=4,
        use_bias=False,
        use_conv_bias=True,
        time_step_rank=4,
    )
    m = mamba.Model(args)
    mx.eval(m.parameters())
    return m


def test_ssm_cache_restores_snapshots_on_backtrack():
    m = tiny_mamba()
    lm = MLXLanguageModel(m, eos_token_ids=[0])
    assert not lm.trimmable and not lm.batchable  # ArraysCache: state cannot be trimmed
    prompt = (1, 2, 3)
    lm.begin(prompt)

    def fresh(t):
        return full_forward_logprobs(m, prompt + t)

    for p in [(5, 6, 7), (5, 9), (5, 9, 1), (5, 9, 2), (5, 6, 7, 8), (4,)]:
        assert logprob_error(lm.logprobs([p])[0], fresh(p)) < TOL
    # backtracks restore the snapshot at the branch point: only the last token is rerun
    assert lm.recomputed_tokens <= 3
    r = VGB(horizon=8, actions=Blocks(2), choice=Candidates(3)).sample(
        lm, FunctionVerifier(lambda p: 0.3 if sum(p) % 2 else 1.0), prompt, seed=1
    )
    assert r.reached_leaf


def test_ssm_cache_without_snapshot_re_prefills_and_counts_it():
    m = tiny_mamba()
    lm = MLXLanguageModel(m, eos_token_ids=[0], max_snapshots=1)  # only the newest state kept
    prompt = (1, 2, 3)
    lm.begin(prompt)
    lm.logprobs([(5, 6, 7)])
    got = lm.logprobs([(8,)])[0]  # no snapshot on this path: rebuilt from the prompt
    assert logprob_error(got, full_forward_logprobs(m, prompt + (8,))) < TOL
    assert lm.recomputed_tokens == 3  # the three prompt tokens, prefilled again


def test_a_prompt_is_prefilled_once_per_model_and_each_run_keeps_its_own_copy():
    from mlx_vgb.lm import PromptCache

    model = tiny_llama(seed=4)
    shared = PromptCache()
    prompt = tuple(int(t) for t in np.random.default_rng(1).integers(1, 48, 30))
    a = MLXLanguageModel(model, prompt_cache=shared)
    a.begin(prompt)
    assert a.forward_calls == 1 and shared.misses == 1  # the prefill ran, and was kept
    b = MLXLanguageModel(model, prompt_cache=shared)
    b.begin(prompt)
    assert b.forward_calls == 0 and shared.hits == 1  # copied, not run
    alone = MLXLanguageModel(model, prompt_cache=None)
    alone.begin(prompt)
    assert alone.forward_calls == 1
    # a walks far (its trunk's cache grows and is trimmed); b's copy is untouched by it
    for q in [(3, 4, 5, 6), (3,), (7, 7, 7, 7, 7, 7)]:
        a.logprobs([q])
    for q in [(), (9,), (9, 2, 2)]:
        got, want = np.array(b.logprobs([q])[0]), np.array(alone.logprobs([q])[0])
        assert logprob_error(got, want) < logprob_tolerance(model, [prompt + q])
        ref = full_forward_logprobs(model, prompt + q)
        assert logprob_error(got, ref) < logprob_tolerance(model, [prompt + q])
    # and the kept entry is untouched by b's walk: a later run still starts from the prompt
    g = MLXLanguageModel(model, prompt_cache=shared)
    g.begin(prompt)
    got = np.array(g.logprobs([(5,)])[0])
    assert logprob_error(got, full_forward_logprobs(model, prompt + (5,))) < logprob_tolerance(
        model, [prompt + (5,)]
    )
    # another model's runs never read this model's entry; other prompts miss
    c = MLXLanguageModel(tiny_llama(seed=5), prompt_cache=shared)
    c.begin(prompt)
    d = MLXLanguageModel(model, prompt_cache=shared)
    d.begin(prompt[:-3] + (1, 2, 3))
    assert (c.forward_calls, d.forward_calls, shared.hits) == (1, 1, 2)
    # a chat's next turn: its prompt starts with this one, so only the new tokens are run
    turn = prompt + (3, 4, 5, 6)
    t2 = MLXLanguageModel(model, prompt_cache=shared)
    t2.begin(turn)
    assert t2.forward_calls == 1 and shared.hits == 3
    got = np.array(t2.logprobs([(8,)])[0])
    assert logprob_error(got, full_forward_logprobs(model, turn + (8,))) < logprob_tolerance(
        model, [turn + (8,)]
    )
    # a size cap: a prompt bigger than the cache is not kept
    small = PromptCache(max_bytes=1)
    e = MLXLanguageModel(model, prompt_cache=small)
    e.begin(prompt)
    f = MLXLanguageModel(model, prompt_cache=small)
    f.begin(prompt)
    assert f.forward_calls == 1 and small.hits == 0


def test_a_freed_models_prompts_leave_the_cache():
    import gc

    from mlx_vgb.lm import PromptCache

    shared = PromptCache()
    prompt = tuple(range(1, 20))
    model = tiny_llama(seed=6)
    MLXLanguageModel(model, prompt_cache=shared).begin(prompt)
    assert shared.nbytes > 0
    keep = tiny_llama(seed=7)
    MLXLanguageModel(keep, prompt_cache=shared).begin(prompt)
    one = shared.nbytes
    del model
    gc.collect()
    MLXLanguageModel(keep, prompt_cache=shared).begin(prompt)  # a hit; the dead entry goes
    assert shared.hits == 1 and 0 < shared.nbytes < one
