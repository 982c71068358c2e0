"""``Sampler.sample_budgets``: one run at the largest forward-token budget gives, for each
smaller budget, exactly what ``sample`` with that budget returns (the bench's budget sweeps
read their smaller budgets off the largest one's run)."""

from dataclasses import replace

import pytest
from tiny_models import even_token_verifier, tiny_llama

from mlx_vgb import (
    VGB,
    ActionLevelRS,
    BlockBestOfN,
    BlockRS,
    Blocks,
    Rejection,
    SelfNormalized,
)
from mlx_vgb.engine import Engine
from mlx_vgb.errors import ConfigError
from mlx_vgb.lm import MLXLanguageModel


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=1)


verifier = even_token_verifier  # V^ in (0, 1]: prefers even tokens, so walks backtrack


SAMPLERS = {
    "vgb-rejection": lambda: VGB(horizon=8, choice=Rejection(2), drift=0.6),
    "vgb-blocks": lambda: VGB(horizon=8, actions=Blocks(2), choice=SelfNormalized(3), drift=0.6),
    "action-rs": lambda: ActionLevelRS(horizon=8, choice=Rejection(2)),
    "vgb-lazy": lambda: VGB(horizon=6, choice=SelfNormalized(2), lazy=True, steps_per_try=12),
    "block-rs": lambda: BlockRS(horizon=8, n=3),
    "block-bon": lambda: BlockBestOfN(horizon=8, actions=Blocks(2), n=3),
}
BUDGETS = [2, 5, 9, 14, 10_000]


def key(r):
    s = r.stats
    return (r.tokens, r.text, r.reached_leaf, r.finish_reason, r.tilt, s.forward_tokens,
            s.steps, s.backtracks, s.restarts, s.proposals, s.model_calls, s.max_depth)  # fmt: skip


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_budget_read_off_one_run_is_that_budgets_own_run(model, name):
    hit = kept = 0
    for seed in range(6):
        prompt = (1, 5, 9, 2)[: 2 + seed % 3]
        alone = [
            replace(SAMPLERS[name](), max_forward_tokens=b).sample(
                MLXLanguageModel(model), verifier(), prompt=prompt, seed=seed
            )
            for b in BUDGETS
        ]
        read = SAMPLERS[name]().sample_budgets(
            MLXLanguageModel(model), verifier(), prompt=prompt, seed=seed, budgets=BUDGETS
        )
        assert [key(r) for r in read] == [key(r) for r in alone]
        hit += sum(r.finish_reason == "budget" for r in alone)
        kept += sum(r.reached_leaf for r in alone)
    assert hit >= 6 and kept >= 6  # both kinds of budget were exercised


def test_budgets_in_any_order_and_in_the_engine(model):
    smp = SAMPLERS["vgb-rejection"]()
    order = [14, 2, 10_000, 5]
    alone = [smp.sample_budgets(MLXLanguageModel(model), verifier(), (3, 4), s, order)
             for s in range(4)]  # fmt: skip
    for s, rs in enumerate(alone):
        want = [
            VGB(horizon=8, choice=Rejection(2), drift=0.6, max_forward_tokens=b).sample(
                MLXLanguageModel(model), verifier(), prompt=(3, 4), seed=s
            )
            for b in order
        ]
        assert [key(r) for r in rs] == [key(r) for r in want]
    jobs = [
        lambda s=s: smp.sample_budgets(MLXLanguageModel(model), verifier(), (3, 4), s, order)
        for s in range(4)
    ]
    batched = Engine().run(jobs)
    assert [[r.tokens for r in rs] for rs in batched] == [[r.tokens for r in rs] for rs in alone]
    with pytest.raises(ConfigError, match="budgets"):
        smp.sample_budgets(MLXLanguageModel(model), verifier(), (3, 4), 0, [])
