"""`sleb-deploy bench` on a static KV-cache workspace (`export --kv-cache static`): the ONNX Runtime runner binds
each layer's buffer in place, sized to the cell (or the graph's fixed length), generates Hugging Face's tokens,
and the report states the contract. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from tiny import TEXT, save_checkpoint, tiny_model, train_tokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DRIVER = (
    "import typer; from sleb_deploy.cli_bench import bench_cmd; app = typer.Typer(); app.command()(bench_cmd); app()"
)
SHORT = ["--batch-sizes", "1,2", "--prompt-len", "8", "--new-tokens", "3", "--long-prompt-len", "24",
         "--long-new-tokens", "2", "--min-reps", "2", "--max-reps", "2", "--seconds-per-cell", "0.01",
         "--threads", "1", "--quiet", "--backends", "ort-cpu"]  # fmt: skip


def _workspace(base: Path, max_cache_len: int | None) -> Path:
    """What `sleb-deploy export --kv-cache static [--max-cache-len N]` writes, for a tiny llama."""
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint
    from sleb_deploy.prune.stage import PruneConfig, prune

    base.mkdir(parents=True, exist_ok=True)
    (base / "text.txt").write_text(TEXT)
    ckpt = save_checkpoint(tiny_model("llama", num_layers=3), train_tokenizer(), base / "tiny")
    ws = base / "export" / "tiny"
    prune(PruneConfig(model=str(ckpt), blocks=[1], out=ws / "hf-pruned", eval_text=str(base / "text.txt"),
                      seq_len=32, eval_windows=2))  # fmt: skip
    cfg = ExportConfig(kv_cache="static", max_cache_len=max_cache_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_checkpoint(str(ckpt), ws / "dense", cfg)
        export_checkpoint(str(ws / "hf-pruned"), ws / "pruned", cfg)
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(tmp_path_factory.mktemp("static"), None)


def _child(*args: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter: the bench creates ONNX Runtime's process-wide thread pool (see bench_child.py)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_static_bench_runs_and_says_so(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    text = str(workspace.parent.parent / "text.txt")
    result = _child("-c", DRIVER, "--workspace", str(workspace), "--out", str(out), "--text", text, *SHORT)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench.json").read_text())
    assert (data["models"]["kv_cache"], data["models"]["max_cache_len"]) == ("static", None)
    ok = [r for r in data["records"] if r["status"] == "ok"]
    assert {(r["row"], r["batch"]) for r in ok} == {("short", 1), ("short", 2), ("long", 1)}
    assert {(r["variant"], r["blocks"]) for r in ok} == {("dense", 3), ("pruned", 2), ("probe", 1)}
    assert all(r["speedup"] is not None for r in ok if r["variant"] == "pruned")
    assert data["harness_check"]["rounds"] == 30  # our in-place step against session.run on copied buffers
    probe = json.loads((workspace / "probe-1block" / "probe.json").read_text())
    assert probe["options"]["kv_cache"] == "static"  # the ideal line is timed on the same contract
    assert (
        "static KV cache (buffers updated in place, sized to each cell's prompt + new tokens)"
        in (out / "bench.md").read_text()
    )


def test_static_runner_generates_the_reference_tokens(workspace: Path, tmp_path: Path) -> None:
    """bench_child.py on the static workspace: OrtRunner's in-place loop gives HF generate's tokens, and an
    interrupted static sweep keeps what it measured."""
    text = str(workspace.parent.parent / "text.txt")
    result = _child(str(HERE / "bench_child.py"), str(workspace), str(tmp_path / "r"), text)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert data["tokens"] == {"OrtRunner": True, "TorchRunner": True}
    assert data["interrupt"]["written_partial"] is True


def test_fixed_buffer_skips_the_cells_it_cannot_hold(tmp_path: Path) -> None:
    """A graph fixed at 16 slots: the 24-token row does not fit and is skipped, naming --max-cache-len."""
    ws = _workspace(tmp_path / "fixed", 16)
    out = tmp_path / "report"
    text = str(ws.parent.parent / "text.txt")
    result = _child("-c", DRIVER, "--workspace", str(ws), "--out", str(out), "--text", text, *SHORT, "--no-ideal")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench.json").read_text())
    assert data["models"]["max_cache_len"] == 16
    status = {(r["row"], r["batch"]): (r["status"], r["note"]) for r in data["records"] if r["phase"] == "e2e"}
    assert status["short", 1][0] == status["short", 2][0] == "ok"
    assert status["long", 1][0] == "skipped" and "16-slot KV cache buffer" in status["long", 1][1]
    assert "--max-cache-len" in status["long", 1][1]
