"""The block-streamed scorer (prune/streamed.py): the cached scorer's numbers and decisions on every family,
its block loads, streamed perplexity, and the prune stage on it (auto pick under --max-memory, the written
checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_scoring import windows
from tiny import FAMILIES, tiny_model
from typer.testing import CliRunner

from sleb_deploy.cli import app
from sleb_deploy.evaluate import perplexity
from sleb_deploy.prune.scoring import BlockCounter, CachedScorer
from sleb_deploy.prune.select import sleb_select
from sleb_deploy.prune.stage import PruneConfig, plan_memory
from sleb_deploy.prune.streamed import StreamedModel, StreamedScorer, streamed_perplexity


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_equals_cached(family: str, tmp_path: Path) -> None:
    model = tiny_model(family, num_layers=6)
    model.save_pretrained(tmp_path)
    ids = windows(n=3)  # batches of 2 and 1 windows: one group, two shapes
    cached = sleb_select(6, 2, CachedScorer(model, ids, batch_size=2))
    sm = StreamedModel(tmp_path, None, "cpu")
    assert all(p.is_meta for b in sm.blocks for p in b.parameters())  # no block is held
    counter = BlockCounter(sm.blocks)
    streamed = sleb_select(6, 2, StreamedScorer(sm, ids, batch_size=2))
    counter.close()
    assert [p.removed for p in streamed] == [p.removed for p in cached]
    for ps, pc in zip(streamed, cached, strict=True):
        assert ps.scores == pytest.approx(pc.scores, rel=1e-5)
    # the cached scorer's block forwards; every alive block read once per phase and group
    assert counter.count == 3 * sum((n - 2) * (n - 1) // 2 + (n - 2) for n in (6, 5))
    assert sm.loads == 6 + 5
    assert all(p.is_meta for b in sm.blocks for p in b.parameters())
    kept = [b for b in range(6) if b not in [p.removed for p in cached]]
    from sleb_deploy.models.adapters import remove_blocks

    dense = perplexity(model, ids, 2)
    assert streamed_perplexity(sm, ids, 2, list(range(6))).nll == pytest.approx(dense.nll, rel=1e-5)
    remove_blocks(model, kept)
    assert streamed_perplexity(sm, ids, 2, kept).nll == pytest.approx(perplexity(model, ids, 2).nll, rel=1e-5)


def test_streamed_groups_without_latter_barrier_and_states_on_cpu(tmp_path: Path) -> None:
    model = tiny_model("gemma3_text")
    model.save_pretrained(tmp_path)
    ids = windows()
    expected = CachedScorer(model, ids)([0, 1, 2, 3, 4, 5], [4, 5])
    sm = StreamedModel(tmp_path, None, "cpu")
    scorer = StreamedScorer(sm, ids, window_groups=2, states_device="cpu")  # groups of batches [0, 1] and [2]
    assert [len(g) for g in scorer.groups] == [2, 1]
    assert scorer([0, 1, 2, 3, 4, 5], [4, 5]) == pytest.approx(expected, rel=1e-5)
    assert sm.loads == 2 * 6


def _args(ckpt: Path, text: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(ckpt), "--calib", str(text), "--eval-text", str(text), "--windows", "4",
            "--seq-len", "32", "--eval-windows", "2", "--out", str(out), "--remove", "2", "--json", *extra]  # fmt: skip


def test_prune_picks_streamed_under_the_budget_and_writes_the_same_checkpoint(
    tokenizer: object, text_file: Path, tmp_path: Path
) -> None:
    """Untied llama and tied gemma3: the budget just under the cached plan's peak makes `auto` stream;
    the decisions, perplexities and the written checkpoint equal the cached run's."""
    from tiny import save_checkpoint
    from transformers import AutoModelForCausalLM

    runner = CliRunner()
    for family in ("llama", "gemma3_text"):
        ckpt = save_checkpoint(tiny_model(family, 6), tokenizer, tmp_path / family)
        cfg = PruneConfig(model=str(ckpt), calib=str(text_file), windows=4, seq_len=32, eval_windows=2, remove=2)
        from sleb_deploy.models.load import resolve_model

        cached_peak = plan_memory(cfg, resolve_model(str(ckpt)), 2).peak_bytes
        ref = runner.invoke(app, _args(ckpt, text_file, tmp_path / f"{family}-c", "--scorer", "cached"))
        res = runner.invoke(app, _args(ckpt, text_file, tmp_path / f"{family}-s", "--max-memory", str(cached_peak - 1)))
        assert ref.exit_code == 0 and res.exit_code == 0, res.stderr
        a, b = json.loads(ref.stdout), json.loads(res.stdout)
        assert a["method"]["scorer"] == "cached" and b["method"]["scorer"] == "streamed"
        assert b["memory_plan"]["scorer"] == "streamed" and b["memory_plan"]["peak_bytes"] < cached_peak
        assert b["config"]["max_memory"] == str(cached_peak - 1) and b["config"]["scorer"] == "auto"
        assert b["removal_order"] == a["removal_order"]
        for pa, pb in zip(a["phases"], b["phases"], strict=True):
            assert pb["scores"] == pytest.approx(pa["scores"], rel=1e-5)
        assert b["perplexity"]["pruned"]["ppl"] == pytest.approx(a["perplexity"]["pruned"]["ppl"], rel=1e-5)
        assert b["cost"]["block_forwards"] == a["cost"]["block_forwards"]
        assert b["cost"]["block_loads"] == b["memory_plan"]["block_loads"] == (6 + 5) + (6 + 4)
        mc = AutoModelForCausalLM.from_pretrained(tmp_path / f"{family}-c").eval()
        ms = AutoModelForCausalLM.from_pretrained(tmp_path / f"{family}-s").eval()
        assert ms.config.num_hidden_layers == 4
        assert {**ms.config.to_dict(), "_name_or_path": ""} == {**mc.config.to_dict(), "_name_or_path": ""}
        ids = torch.randint(4, 300, (2, 12))
        assert torch.equal(ms(input_ids=ids).logits, mc(input_ids=ids).logits)
        assert (tmp_path / f"{family}-s" / "generation_config.json").is_file()


def test_budget_too_small_is_one_line(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, _args(llama_dir, text_file, tmp_path / "o", "--max-memory", "1MiB"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "raise --max-memory" in result.stderr and not (tmp_path / "o").exists()


def test_pruned_checkpoint_written_in_shards_equals_the_pruned_model(tmp_path: Path) -> None:
    """Tied OPT, shards far smaller than the model: an index and several files that transformers loads back
    into exactly the pruned model."""
    from transformers import AutoModelForCausalLM

    from sleb_deploy.models.adapters import remove_blocks
    from sleb_deploy.prune.streamed import INDEX, write_pruned_checkpoint

    model = tiny_model("opt", 6)
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "out").mkdir()
    write_pruned_checkpoint(StreamedModel(tmp_path / "src", None, "cpu"), [0, 2, 3, 5], tmp_path / "out", 20_000)
    assert (tmp_path / "out" / INDEX).is_file() and len(list((tmp_path / "out").glob("*.safetensors"))) > 2
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    remove_blocks(model, [0, 2, 3, 5])
    ids = torch.randint(4, 300, (2, 9))
    assert pruned.config.num_hidden_layers == 4
    assert torch.equal(pruned(input_ids=ids).logits, model(input_ids=ids).logits)


def test_accelerate_device_map_on_the_plain_path(tmp_path: Path) -> None:
    """The README's several-GPU recipe: a model dispatched by accelerate's device map (here CPU + disk offload,
    the same hooks that place blocks on several GPUs) scored by the cached scorer decides as the plain model."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", 6)
    model.save_pretrained(tmp_path / "ckpt")
    ids = windows()
    expected = sleb_select(6, 2, CachedScorer(model, ids))
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "cpu" if i < 3 else "disk" for i in range(6)}}  # fmt: skip
    dispatched = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ckpt", device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert dispatched.model.layers[4].mlp.up_proj.weight.is_meta  # really offloaded, loaded per forward
    got = sleb_select(6, 2, CachedScorer(dispatched, ids))
    assert [p.removed for p in got] == [p.removed for p in expected]
    for pg, pe in zip(got, expected, strict=True):
        assert pg.scores == pytest.approx(pe.scores, rel=1e-5)
