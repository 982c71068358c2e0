"""The Dyck task: the validity check, the generator, prompts, the tokenizer, and the shipped
LM + value head (loadable, and the head separates good from bad prefixes on fresh data)."""

from pathlib import Path

import numpy as np
import pytest
from tiny_models import LOGPROB_TOL, logprob_error

from mlx_vgb.tasks import dyck

ASSETS = Path(dyck.__file__).resolve().parent.parent / "assets" / "dyck"
SHIPPED_HEAD_MIN_AUC = 0.8  # measured 0.87 on these prompts; held-out AUC at training 0.83


def ids(text):
    return dyck.encode(text)


def test_validity_accepts_balanced_strings_of_length_32():
    assert dyck.is_valid(ids("()" * 16))
    assert dyck.is_valid(ids("[" * 12 + "]" * 12 + "()" * 4))
    assert dyck.is_valid(ids("([])" * 8))


@pytest.mark.parametrize(
    "text,why",
    [
        ("()" * 15, "too short"),
        ("()" * 17, "too long"),
        ("(" * 13 + ")" * 13 + "()" * 3, "depth 13 > 12"),
        ("(]" + "()" * 15, "wrong closing type"),
        (")(" + "()" * 15, "close on empty stack"),
        ("((" + "()" * 15, "unbalanced"),
    ],
)
def test_validity_rejects(text, why):
    assert not dyck.is_valid(ids(text)), why


def test_first_error_points_at_the_first_uncompletable_bracket():
    assert dyck.first_error(ids("(()]")) == 3
    assert dyck.first_error(ids("((()))")) == -1
    assert dyck.first_error(ids("(" * 13)) == 12  # depth limit
    # four open brackets fit in the four positions left; a fifth does not
    assert dyck.first_error(ids("(" * 12 + ")" * 12 + "(" * 4)) == -1
    assert dyck.first_error(ids("(" * 12 + ")" * 12 + "(" * 5)) == 28
    assert dyck.first_error(ids("()" * 14 + "(((")) == 30
    assert not dyck.is_valid_prefix([dyck.PAD])


def test_generator_yields_valid_strings_with_the_requested_type_mix():
    s = dyck.sample_strings(4000, np.random.default_rng(0), dyck.TRAIN_TYPE_PROBS)
    assert all(dyck.is_valid(x) for x in s)
    opens = s[s < dyck.NUM_TYPES]
    assert abs((opens == 0).mean() - 0.2) < 0.02
    depth = np.cumsum(np.where(s < 2, 1, -1), axis=1)
    assert depth.max() == dyck.MAX_DEPTH
    ood = dyck.sample_strings(4000, np.random.default_rng(1), dyck.OOD_TYPE_PROBS)
    assert abs((ood[ood < 2] == 0).mean() - 0.8) < 0.02


def test_generator_is_deterministic_under_a_seed():
    a = dyck.sample_strings(50, np.random.default_rng(3))
    b = dyck.sample_strings(50, np.random.default_rng(3))
    assert (a == b).all()


def test_prompts_are_valid_prefixes_with_the_right_horizon():
    ps = dyck.make_prompts(50, seed=5)
    for p in ps:
        k = len(p["prompt"])
        assert dyck.DEFAULT_PROMPT_LENGTHS[0] <= k <= dyck.DEFAULT_PROMPT_LENGTHS[1]
        assert dyck.is_valid_prefix(ids(p["prompt"]))
        assert p["max_tokens"] == dyck.LENGTH - k + 1
    assert ps == dyck.make_prompts(50, seed=5)


def test_reward_and_completion_check():
    prompt = "(([]"
    good = ")" + ")" + "()" * 13
    assert dyck.reward(prompt, good) == 1.0
    assert dyck.reward("<bos>" + prompt, good) == 1.0
    assert dyck.reward(prompt, good[:-1]) == 0.0
    assert dyck.reward(prompt, good[:-1] + "<pad>") == 0.0
    p = [dyck.BOS] + ids(prompt)
    assert dyck.is_valid_completion(p, ids(good) + [dyck.EOS])
    assert not dyck.is_valid_completion(p, ids(good))  # no EOS


def test_tokenizer_round_trip(tmp_path):
    from transformers import PreTrainedTokenizerFast

    dyck.write_tokenizer(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.encode("(()[") == [dyck.BOS, 0, 0, 2, 1]
    assert tok.decode([0, 1, 2, 3, dyck.EOS], skip_special_tokens=True) == "([)]"
    assert tok.eos_token_id == dyck.EOS and tok.pad_token_id == dyck.PAD


def test_shipped_lm_is_a_normal_mlx_lm_folder(shipped):
    model, tok, cfg, _head, backbone = shipped
    assert tok.encode("(()") == [dyck.BOS, 0, 0, 2]
    assert model.args.vocab_size == len(dyck.VOCAB)
    assert backbone is None and cfg.backbone == "generator"
    assert cfg.head.dims[0] == model.args.hidden_size
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 5e6


def test_shipped_head_auc_on_fresh_ood_rollouts(shipped):
    from mlx_vgb.bench.dyck import head_auc_on

    model, _, _, head, _ = shipped
    prompts = dyck.make_prompts(24, seed=987_654, id_prefix="fresh")
    m = head_auc_on(model, head, prompts, n=4, seed=11)
    assert 0.0 < m.base_rate < 1.0
    assert m.auc > SHIPPED_HEAD_MIN_AUC, m.auc


def test_memo_tree_lm_matches_a_plain_forward(shipped):
    import mlx.core as mx

    from mlx_vgb.bench.memo_lm import MemoTreeLM

    model, _, _, head, _ = shipped
    lm = MemoTreeLM(model, head, [dyck.EOS])
    prompt = [dyck.BOS] + ids("(()((")
    lm.begin(prompt)
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = tuple(int(t) for t in rng.integers(0, 4, size=9))
        for i in (0, 1, 5, 9):
            x = mx.array([prompt + list(p[:i])])
            h = model.model(x)
            ref = model(x)[0, -1]
            ref = np.array(ref - mx.logsumexp(ref))
            assert logprob_error(lm.logprobs([p[:i]])[0], ref) < LOGPROB_TOL
            assert abs(lm.values([p[:i]])[0] - float(head(h)[0, -1])) < 1e-4
    lm.begin(prompt)
    assert lm.run_cost == 0
    lm.logprobs([(0,), (0, 2)])
    lm.values([(0,)])
    assert lm.run_cost == 2


def test_memo_tree_lm_computes_only_the_prefixes_asked_about(shipped):
    from mlx_vgb.bench.memo_lm import MemoTreeLM

    model, _, _, head, _ = shipped
    lm = MemoTreeLM(model, head, [dyck.EOS])
    lm.begin([dyck.BOS] + ids("(()"))
    lm.logprobs([(), (0,), (0, 2), (0, 2, 3)])  # the prompt itself is computed by begin
    assert lm.rows == 3 and lm.expansions == 3  # one forward per wave, parents first
    lm.values([(1,), (0, 2, 3, 1), (0, 2, 3)])  # (0, 2, 3) is known; two new, lengths mixed
    assert lm.rows == 5 and lm.expansions == 4
    lm.logprobs([(4, 4, 4)])  # parents that were never asked are computed on the way
    assert lm.rows == 8 and lm.run_cost == 7


def test_memo_mixed_length_forward_matches_one_prefix_at_a_time(shipped):
    from mlx_vgb.bench.memo_lm import MemoTreeLM

    model, _, _, head, _ = shipped
    prompt = [dyck.BOS] + ids("(()((")
    rng = np.random.default_rng(3)
    asked = sorted({tuple(int(t) for t in rng.integers(0, 4, size=int(n))) for n in
                    rng.integers(1, 12, size=40)})  # fmt: skip
    one, batch = MemoTreeLM(model, head, [dyck.EOS]), MemoTreeLM(model, head, [dyck.EOS])
    one.begin(prompt)
    batch.begin(prompt)
    ref = np.stack([one.logprobs([p])[0] for p in asked])
    ref_v = np.array([one.values([p])[0] for p in asked])
    got = batch.logprobs(asked)  # every length in one call: waves mix lengths, padding masked
    assert batch.expansions <= 11 < one.expansions
    assert max(logprob_error(a, b) for a, b in zip(got, ref)) < LOGPROB_TOL
    assert np.abs(batch.values(asked) - ref_v).max() < 1e-4


def test_memo_pool_split_in_chunks_gives_the_same_rows(shipped, monkeypatch):
    """The key / value pool grows in chunks (no copy of what is stored): a pool cut into chunks
    of 7 rows, every path spanning several, gives bit for bit what one chunk gives."""
    from mlx_vgb.bench import memo_lm

    model, _, _, head, _ = shipped
    prompt = [dyck.BOS] + ids("(()((")
    rng = np.random.default_rng(5)
    asked = sorted({tuple(int(t) for t in rng.integers(0, 4, size=int(n))) for n in
                    rng.integers(1, 12, size=30)})  # fmt: skip
    whole = memo_lm.MemoTreeLM(model, head, [dyck.EOS])
    whole.begin(prompt)
    ref, ref_v = whole.logprobs(asked), whole.values(asked)
    assert len(whole._chunks) == 1
    row_bytes = whole._chunks[0][0].nbytes
    monkeypatch.setattr(memo_lm, "CHUNK_BYTES", 7 * row_bytes)
    cut = memo_lm.MemoTreeLM(model, head, [dyck.EOS])
    cut.begin(prompt)
    got, got_v = cut.logprobs(asked), cut.values(asked)
    assert cut._chunk_rows == 7 and len(cut._chunks) == -(-cut._used // 7) > 10
    assert np.array_equal(got, ref) and np.array_equal(got_v, ref_v)


def test_memo_views_in_an_engine_draw_what_runs_alone_draw(shipped):
    """Runs on views of one memo, concurrent in an engine (their misses computed together),
    give the samples and per-run costs of the same runs one at a time on a memo of their own."""
    from mlx_vgb.baselines import BlockRS
    from mlx_vgb.bench.dyck_treelm import DyckTreeLM
    from mlx_vgb.children import Enumerate
    from mlx_vgb.engine import Engine
    from mlx_vgb.model_verifier import ValueHeadVerifier
    from mlx_vgb.vgb import VGB

    model, _, _, head, _ = shipped
    p = dyck.make_prompts(1, 21, dyck.OOD_TYPE_PROBS)[0]
    prompt, H = [dyck.BOS] + dyck.encode(p["prompt"]), p["max_tokens"]
    samplers = [VGB(horizon=H, choice=Enumerate(), drift=1.0), BlockRS(horizon=H, n=4)]

    def draw(lm, s, seed):
        r = s.sample(lm, ValueHeadVerifier(lm, tilt=dyck.completion_tilt), prompt=prompt, seed=seed)
        return r.tokens, r.stats.steps, lm.run_cost

    alone = [draw(DyckTreeLM(model, head), s, seed) for s in samplers for seed in range(4)]
    memo = DyckTreeLM(model, head)
    memo.begin(prompt)
    eng = Engine()
    together = eng.run([lambda s=s, seed=seed: draw(memo.view(), s, seed)
                        for s in samplers for seed in range(4)])  # fmt: skip
    assert together == alone
    assert eng.stats.shared > 0  # misses of several runs were computed together
    assert memo.rows == len(memo._logp) - len(prompt)  # every prefix computed once
    with pytest.raises(ValueError):  # a view is bound to its memo's prompt
        memo.view().begin(prompt[:-1])
    v = memo.view()
    with pytest.raises(ValueError):  # the views share the memo's head
        v.set_head(head)
    memo.begin(prompt[:-1])  # the memo moves on: an old view refuses to run
    with pytest.raises(ValueError):
        v.logprobs([()])


def test_pareto_front():
    from mlx_vgb.bench.dyck import pareto_front

    pts = [(1, 0.9), (2, 0.8), (1.5, 0.7), (3, 0.5), (0.5, 0.95), (2, 0.79)]
    assert pareto_front(pts) == [4, 0, 1, 3]


def test_shipped_head_gives_the_same_values_through_the_generic_adapter(shipped):
    """The head reads the generator's last hidden state the same way in ``mlx_vgb.lm`` (used by
    ``mlx-vgb generate --verifier head:...``) as in the benchmark's memoized adapter."""
    lm_mod = pytest.importorskip("mlx_vgb.lm")
    from mlx_vgb.bench.memo_lm import MemoTreeLM

    model, tok, _, head, _ = shipped
    prompt = [dyck.BOS] + ids("([((")
    generic = lm_mod.MLXLanguageModel(model, tok, value_head=head)
    memo = MemoTreeLM(model, head, [dyck.EOS])
    generic.begin(prompt)
    memo.begin(prompt)
    for p in [(0,), (0, 2), (0, 2, 3), (1,)]:
        assert np.allclose(generic.values([p]), memo.values([p]), atol=1e-4)
        assert np.allclose(generic.logprobs([p]), memo.logprobs([p]), atol=1e-4)
