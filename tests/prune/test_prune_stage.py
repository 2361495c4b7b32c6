"""The prune stage through the CLI on a tiny checkpoint: output contract, --json, bad input, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sleb_deploy.cli import app
from sleb_deploy.prune.stage import PruneConfig, PruneInterrupted, progress_path, prune

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def base_args(llama_dir: Path, text_file: Path, out: Path) -> list[str]:
    return ["prune", "--model", str(llama_dir), "--calib", str(text_file), "--eval-text", str(text_file),
            "--windows", "4", "--seq-len", "32", "--eval-windows", "2", "--out", str(out), "--quiet"]  # fmt: skip


def test_prune_json_and_checkpoint(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    code, stdout, _ = run(*base_args(llama_dir, text_file, out), "--remove", "2", "--json")
    assert code == 0
    data = json.loads(stdout)  # one JSON object and nothing else on stdout
    first = data["phases"][0]["scores"]
    removed = data["removal_order"]
    assert removed[0] == int(min(first, key=first.get))
    assert len(removed) == 2 and data["kept_blocks"] == [i for i in range(6) if i not in removed]
    assert data["calibration"]["tokens"] == 4 * 32
    assert all(len(p["scores"]) == 4 - i for i, p in enumerate(data["phases"]))
    assert data["perplexity"]["dense"]["ppl"] > 1
    manifest = json.loads((out / "sleb.json").read_text())
    assert manifest == data  # --json prints the manifest itself
    assert manifest["model"]["checksum"] and manifest["calibration"]["token_sha256"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert not progress_path(out).exists()


def test_local_text_windows_are_consecutive_from_start(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from sleb_deploy.data import draw_windows

    tok = AutoTokenizer.from_pretrained(llama_dir)
    ids, spec = draw_windows(tok, str(text_file), 3, 20, seed=123)
    stream = tok(text_file.read_text())["input_ids"]
    assert ids.tolist() == [stream[0:20], stream[20:40], stream[40:60]]
    assert spec.seed is None and spec.tokens == 60 and spec.source_tokens == len(stream)


def test_block_influence_and_blocks_baselines(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    code, stdout, _ = run(*base_args(llama_dir, text_file, tmp_path / "bi"), "--metric", "block-influence",
                          "--remove", "1", "--json")  # fmt: skip
    assert code == 0 and json.loads(stdout)["removal_order"] == [3]  # the identity block: cos(in, out) = 1
    code, stdout, _ = run(*base_args(llama_dir, text_file, tmp_path / "bl"), "--blocks", "2,4", "--json")
    assert code == 0 and json.loads(stdout)["removal_order"] == [2, 4]
    manifest = json.loads((tmp_path / "bl" / "sleb.json").read_text())
    assert manifest["method"]["metric"] == "blocks"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--remove", "6"], "not fewer than"),
        (["--remove", "5"], "at most 4"),
        (["--ratio", "1.5"], "strictly between 0 and 1"),
        (["--ratio", "0"], "strictly between 0 and 1"),
        (["--windows", "500"], "fewer than"),
        (["--blocks", "2,9"], "out of range"),
        (["--metric", "magic"], "not one of"),
        (["--max-memory", "8XB"], "not a size"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    llama_dir: Path, text_file: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    code, _, stderr = run(*base_args(llama_dir, text_file, out), *extra)
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_path_and_unsupported_architecture(tmp_path: Path, text_file: Path) -> None:
    code, _, stderr = run("prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2 and "does not exist" in stderr
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, _, stderr = run("prune", "--model", str(tmp_path / "gpt"), "--out", str(tmp_path / "o"))
    assert code == 2 and "'gpt2' is not supported" in stderr and "llama" in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = run("prune", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no config.json" in stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept_without_force(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, stderr = run(*base_args(llama_dir, text_file, out), "--remove", "1")
    assert code == 3 and "already exists" in stderr and "--force" in stderr
    assert (out / "precious.txt").read_text() == "keep me"
    code, _, _ = run(*base_args(llama_dir, text_file, out), "--remove", "1", "--force")
    assert code == 0 and (out / "sleb.json").is_file() and not (out / "precious.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or backup directories left


def test_interrupted_run_leaves_nothing_and_resumes(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = PruneConfig(model=str(llama_dir), out=out, calib=str(text_file), eval_text=str(text_file), windows=4,
                      seq_len=32, eval_windows=2, remove=3)  # fmt: skip
    reference = prune(PruneConfig(**{**cfg.__dict__, "out": tmp_path / "ref"}))

    def interrupt(phase: int, phases: int, done: int, total: int) -> None:
        if phase == 1 and done == 2:  # mid-phase: the second phase's second candidate
            raise KeyboardInterrupt

    with pytest.raises(PruneInterrupted, match="--resume"):
        prune(cfg, on_candidate=interrupt)
    assert not out.exists()
    saved = json.loads(progress_path(out).read_text())
    assert len(saved["phases"]) == 1

    seen: list[int] = []
    resumed = prune(PruneConfig(**{**cfg.__dict__, "resume": True}), on_candidate=lambda p, k, d, t: seen.append(p))
    assert resumed.cost["resumed_phases"] == 1 and 0 not in seen
    assert resumed.removal_order == reference.removal_order
    assert [p["scores"] for p in resumed.phases] == [p["scores"] for p in reference.phases]
    assert not progress_path(out).exists()


def test_cli_interrupt_message(
    llama_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleb_deploy.prune import stage

    def boom(*args: object, **kwargs: object) -> float:
        raise KeyboardInterrupt  # what Ctrl-C raises inside the search

    monkeypatch.setattr(stage, "sleb_select", boom)
    out = tmp_path / "out"
    code, _, stderr = run(*base_args(llama_dir, text_file, out), "--remove", "1")
    assert code == 130 and "--resume" in stderr and not out.exists()


def test_pruned_logits_equal_dense_with_blocks_skipped(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "p"
    assert run(*base_args(llama_dir, text_file, out), "--blocks", "1,3")[0] == 0
    dense = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(4, 300, (2, 9))
    blocks = dense.model.layers
    hooks = [blocks[i].register_forward_hook(lambda m, a, o: a[0]) for i in (1, 3)]
    ref = dense.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for h in hooks:
        h.remove()
    assert torch.equal(pruned.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0), ref)


@pytest.mark.parametrize(("family", "used"), [("llama", "never"), ("gemma3_text", "always")])
def test_window_bos_auto_follows_the_family_table(
    family: str, used: str, tokenizer: object, text_file: Path, tmp_path: Path
) -> None:
    """`--window-bos auto` (the default) resolves from the family table; sleb.json records the choice, what it
    resolved to, and the calibration and evaluation windows say which semantics drew them."""
    from tiny import save_checkpoint, tiny_model

    ckpt = save_checkpoint(tiny_model(family, 4), tokenizer, tmp_path / family)
    code, stdout, stderr = run(*base_args(ckpt, text_file, tmp_path / "out"), "--remove", "1", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["method"]["window_bos"] == {"choice": "auto", "used": used}
    assert data["calibration"]["bos"] == data["perplexity"]["eval"]["bos"] == used
    forced = run(*base_args(ckpt, text_file, tmp_path / "never"), "--remove", "1", "--window-bos", "never", "--json")
    assert json.loads(forced[1])["calibration"]["bos"] == "never"
