"""Scorers on tiny models of every family: known answer, cached == naive, block-forward counts."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, make_identity, tiny_model

from sleb_deploy.models.adapters import adapter_for, remove_blocks
from sleb_deploy.prune.scoring import BlockCounter, CachedScorer, NaiveScorer, block_influence
from sleb_deploy.prune.select import sleb_select


def windows(seed: int = 1, n: int = 3, length: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (n, length), generator=g)


def own_text(model: torch.nn.Module, n: int = 3, length: int = 16) -> torch.Tensor:
    """Windows the dense model predicts well (its own greedy continuations of random prompts).

    On random tokens a random model's NLL is near uniform and removing a block can lower it; on its own
    text, every block that changes the logits raises the NLL, so an identity block must win.
    """
    prompt = windows(n=n, length=2)
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=length - 2,
        min_new_tokens=length - 2,
        do_sample=False,
        pad_token_id=0,
    )
    return out[:, :length]


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_block_is_removed_first_and_logits_unchanged(family: str) -> None:
    model = tiny_model(family)
    make_identity(model, 3)
    ids = own_text(model)
    dense = model(input_ids=ids).logits
    phases = sleb_select(6, 1, CachedScorer(model, ids, batch_size=2))
    assert phases[0].removed == 3
    # the identity block's score is the dense NLL itself, strictly below every other candidate
    others = [s for b, s in phases[0].scores.items() if b != 3]
    assert phases[0].scores[3] < min(others)
    remove_blocks(model, [0, 1, 2, 4, 5])
    torch.testing.assert_close(model(input_ids=ids).logits, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_equals_naive(family: str) -> None:
    model = tiny_model(family, num_layers=8)
    ids = windows(n=4)
    blocks = adapter_for(model).blocks(model)
    results = {}
    for name, cls in (("naive", NaiveScorer), ("cached", CachedScorer)):
        counter = BlockCounter(blocks)
        phases = sleb_select(8, 3, cls(model, ids, batch_size=2))
        counter.close()
        results[name] = (phases, counter.count)
    naive, cached = results["naive"][0], results["cached"][0]
    assert [p.removed for p in cached] == [p.removed for p in naive]
    for pc, pn in zip(cached, naive, strict=True):
        assert pc.scores.keys() == pn.scores.keys()
        for b in pc.scores:
            assert pc.scores[b] == pytest.approx(pn.scores[b], rel=1e-4)
    # block forwards per window: naive (n-2)(n-1) vs cached (n-2)(n-1)/2 + (n-2) per phase, n = 8, 7, 6
    assert results["naive"][1] == 4 * sum((n - 2) * (n - 1) for n in (8, 7, 6))
    assert results["cached"][1] == 4 * sum((n - 2) * (n - 1) // 2 + (n - 2) for n in (8, 7, 6))


def test_cached_scorer_reaches_last_block_without_latter_barrier() -> None:
    model = tiny_model("llama")
    ids = windows()
    cached = CachedScorer(model, ids)([0, 1, 2, 3, 4, 5], [4, 5])
    naive = NaiveScorer(model, ids)([0, 1, 2, 3, 4, 5], [4, 5])
    assert cached == pytest.approx(naive, rel=1e-5)


def test_block_influence_ranks_identity_block_lowest() -> None:
    model = tiny_model("qwen3")
    make_identity(model, 2)
    scores = block_influence(model, windows())
    assert scores[2] == pytest.approx(0.0, abs=1e-5)
    assert min(scores, key=lambda b: scores[b]) == 2
