"""The real default model (SmolLM2-135M-Instruct, built offline from its PyPI wheel) end to end.

Slow (minutes on 2 cores): the first use converts the GGUF; each export takes about a minute.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sleb_deploy.data import draw_windows
from sleb_deploy.models.adapters import adapter_for
from sleb_deploy.models.load import load_model, load_tokenizer, resolve_model
from sleb_deploy.prune.scoring import BlockCounter, CachedScorer, NaiveScorer
from sleb_deploy.prune.select import sleb_select

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():  # type: ignore[no-untyped-def]
    source = resolve_model("smollm2-135m")
    return source, load_model(source), load_tokenizer(source)


def test_zoo_model_is_a_plain_checkpoint(default_model) -> None:  # type: ignore[no-untyped-def]
    source, model, tokenizer = default_model
    assert source.kind == "zoo" and source.checksum
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == ("llama", 30, 576, 3)
    assert cfg.rope_parameters["rope_theta"] == 100000.0
    assert not hasattr(cfg, "quantization_config")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])  # the dequantized weights are a working model


def test_naive_cached_and_streamed_scorers_agree(default_model) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from sleb_deploy.prune.streamed import StreamedModel, StreamedScorer

    source, model, tokenizer = default_model
    windows, spec = draw_windows(tokenizer, "wiki-articles", 2, 64, seed=0)
    assert spec.tokens == 128 and spec.source_tokens > 500_000
    streamed = StreamedModel(Path(source.location), None, "cpu")  # blocks read from model.safetensors
    runs = {}
    for name, scorer, blocks, k in (
        ("naive", NaiveScorer(model, windows, batch_size=2), adapter_for(model).blocks(model), 2),
        ("cached", CachedScorer(model, windows, batch_size=2), adapter_for(model).blocks(model), 2),
        # the first phase only (all 28 candidates; ~30 s of CI on 2 cores)
        ("streamed", StreamedScorer(streamed, windows, batch_size=2), streamed.blocks, 1),
    ):
        counter = BlockCounter(list(blocks))
        runs[name] = (sleb_select(30, k, scorer), counter.count)
        counter.close()
    (naive, naive_count), (cached, cached_count) = runs["naive"], runs["cached"]
    assert [p.removed for p in cached] == [p.removed for p in naive]
    for pc, pn in zip(cached, naive, strict=True):
        for b in pn.scores:
            assert pc.scores[b] == pytest.approx(pn.scores[b], rel=1e-4)
    assert cached_count <= 0.55 * naive_count
    (stream,), stream_count = runs["streamed"]
    assert stream.removed == cached[0].removed and stream_count == 2 * ((28 * 29) // 2 + 28)
    assert stream.scores == pytest.approx(cached[0].scores, rel=1e-5)
    assert streamed.loads == 30


def test_pruned_default_model_onnx_generation(default_model, default_exports) -> None:  # type: ignore[no-untyped-def]
    """The pruned checkpoint equals the dense model with those blocks skipped; ORT greedy tokens equal
    transformers' for the dense and the pruned export."""
    from defaults import DEFAULT_PRUNED_BLOCKS
    from transformers import AutoModelForCausalLM

    from sleb_deploy.export.ort_generate import OrtGenerator

    _, model, tokenizer = default_model
    pruned_dir = default_exports["pruned_hf"]
    manifest = json.loads((pruned_dir / "sleb.json").read_text())
    ppl = manifest["perplexity"]
    assert ppl["pruned"]["ppl"] > ppl["dense"]["ppl"] > 1
    pruned = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    assert pruned.config.num_hidden_layers == 30 - len(DEFAULT_PRUNED_BLOCKS)

    tokenizer.padding_side = "left"
    batch = tokenizer(["The river Thames flows through", "Photosynthesis is"], return_tensors="pt", padding=True)
    blocks = adapter_for(model).blocks(model)
    hooks = [blocks[i].register_forward_hook(lambda m, a, o: a[0]) for i in DEFAULT_PRUNED_BLOCKS]
    skipped = model.generate(**batch, max_new_tokens=12, do_sample=False)
    for h in hooks:
        h.remove()
    assert torch.equal(pruned.generate(**batch, max_new_tokens=12, do_sample=False), skipped)

    for name in ("dense", "pruned"):
        exported = json.loads((default_exports[name] / "export.json").read_text())
        assert exported["validation"]["status"] == "passed"
        fp32 = AutoModelForCausalLM.from_pretrained(default_exports[f"{name}_hf"], dtype=torch.float32).eval()
        ref = fp32.generate(**batch, max_new_tokens=12, do_sample=False)
        got = OrtGenerator(default_exports[name] / "model.onnx").generate(
            batch["input_ids"].numpy(), batch["attention_mask"].numpy(), max_new_tokens=12
        )
        np.testing.assert_array_equal(got, ref.numpy(), err_msg=f"{name}: ORT and transformers tokens differ")
