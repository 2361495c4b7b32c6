"""Block removal on every family: config, layer_idx, save/reload, and equality with skipped blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import FAMILIES, tiny_model
from transformers import AutoModelForCausalLM

from sleb_deploy.errors import UnsupportedModelError
from sleb_deploy.models.adapters import SUPPORTED_MODEL_TYPES, adapter_for, blocks_view, get_adapter, remove_blocks


def skip_hooks(model: Any, skipped: list[int]) -> list[Any]:
    """Make blocks identities with forward hooks: an independent reference for removal."""
    blocks = adapter_for(model).blocks(model)

    def identity(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *output[1:]) if isinstance(output, tuple) else x

    return [blocks[i].register_forward_hook(identity, with_kwargs=True) for i in skipped]


def test_unknown_model_type_names_supported_ones() -> None:
    with pytest.raises(UnsupportedModelError, match="llama") as err:
        get_adapter("gpt2")
    assert "gpt2" in str(err.value)
    assert set(FAMILIES) == set(SUPPORTED_MODEL_TYPES)  # every row of the family table has a tiny model


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_view_restores_everything(family: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(3, 300, (2, 12))
    before = model(input_ids=ids).logits
    layer_types = getattr(model.config, "layer_types", None)
    with blocks_view(model, [0, 2, 5]):
        assert model.config.num_hidden_layers == 3
        assert len(adapter_for(model).blocks(model)) == 3
        inside = model(input_ids=ids).logits
    assert not torch.allclose(before, inside)
    assert model.config.num_hidden_layers == 6
    assert getattr(model.config, "layer_types", None) == layer_types
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_checkpoint_reloads_and_matches_skipped_dense(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    removed = [1, 4]
    kept = [0, 2, 3, 5]
    layer_types = getattr(model.config, "layer_types", None)
    ids = torch.randint(3, 300, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row

    handles = skip_hooks(model, removed)
    ref_logits = model(input_ids=ids, attention_mask=mask).logits
    ref_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for h in handles:
        h.remove()

    remove_blocks(model, kept)
    model.save_pretrained(tmp_path)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert pruned.config.num_hidden_layers == 4
    assert len(adapter_for(pruned).blocks(pruned)) == 4
    if isinstance(layer_types, list):
        assert pruned.config.layer_types == [layer_types[i] for i in kept]
    idx = [m.layer_idx for m in pruned.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(idx)) == [0, 1, 2, 3]
    torch.testing.assert_close(pruned(input_ids=ids, attention_mask=mask).logits, ref_logits, rtol=1e-5, atol=1e-5)
    gen = pruned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, ref_gen)
