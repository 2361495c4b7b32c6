"""One real short run of `sleb-deploy bench` on a tiny exported workspace, and its bad-input paths.

The workspace is what `sleb-deploy export` writes (pruned checkpoint + sleb.json, dense and pruned ONNX +
export.json), made from a tiny random llama. Timings are never asserted: only what was measured and written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer
from tiny import TEXT, save_checkpoint, tiny_model, train_tokenizer
from typer.testing import CliRunner

from sleb_deploy.cli_bench import bench_cmd, report_cmd

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

app = typer.Typer()
app.command("bench")(bench_cmd)
app.command("report")(report_cmd)
runner = CliRunner()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DRIVER = (
    "import typer; from sleb_deploy.cli_bench import bench_cmd, report_cmd; app = typer.Typer(); "
    "app.command('bench')(bench_cmd); app.command('report')(report_cmd); app()"
)
SHORT = ["--batch-sizes", "1,2", "--prompt-len", "8", "--new-tokens", "3", "--long-prompt-len", "24",
         "--long-new-tokens", "2", "--min-reps", "2", "--max-reps", "2", "--seconds-per-cell", "0.01",
         "--threads", "1", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint
    from sleb_deploy.prune.stage import PruneConfig, prune

    base = tmp_path_factory.mktemp("bench")
    text = base / "text.txt"
    text.write_text(TEXT)
    ckpt = save_checkpoint(tiny_model("llama", num_layers=3), train_tokenizer(), base / "tiny")
    ws = base / "export" / "tiny"
    prune(PruneConfig(model=str(ckpt), blocks=[1], out=ws / "hf-pruned", eval_text=str(text), seq_len=32,
                      eval_windows=2))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_checkpoint(str(ckpt), ws / "dense", ExportConfig())
        export_checkpoint(str(ws / "hf-pruned"), ws / "pruned", ExportConfig())
    return ws


def _child(*args: str) -> subprocess.CompletedProcess[str]:
    """Run in a fresh interpreter: the bench creates ONNX Runtime's process-wide thread pool (see bench_child)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_bench_real_short_run(workspace: Path, tmp_path: Path) -> None:
    text = workspace.parent.parent / "text.txt"
    out = tmp_path / "report"
    args = ["bench", "--workspace", str(workspace), "--out", str(out), "--text", str(text), *SHORT,
            "--backends", "ort-cpu,torch-cpu,tensorrt"]  # fmt: skip
    result = _child("-c", DRIVER, *args)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == "sleb-deploy/bench@1" and data["partial"] is False
    assert data["environment"]["versions"]["onnxruntime"]
    status = {b["key"]: b for b in data["backends"]}
    assert status["tensorrt"]["status"] == "skipped" and "NVIDIA GPU" in status["tensorrt"]["note"]
    assert status["ort-cpu"]["status"] == status["torch-cpu"]["status"] == "ran"
    assert status["ort-cpu"]["threads"] == 1  # the global pool as asked
    ok = [r for r in data["records"] if r["status"] == "ok"]
    cells = {(r["backend"], r["row"], r["batch"]) for r in ok}
    assert cells == {
        (b, row, n) for b in ("ort-cpu", "torch-cpu") for row, n in (("short", 1), ("short", 2), ("long", 1))
    }
    assert {(r["variant"], r["blocks"]) for r in ok} == {("dense", 3), ("pruned", 2), ("probe", 1)}
    pruned = [r for r in ok if r["variant"] == "pruned"]
    assert all(r["speedup"] is not None and r["naive_speedup"] == 1.5 for r in pruned)
    assert data["harness_check"]["rounds"] == 30
    assert data["quality"]["dense_ppl"] > 0 and data["quality"]["removal_order"] == [1]
    assert (workspace / "probe-1block" / "probe.json").is_file()
    assert {"bench.csv", "bench.md", "latency.png", "speedup.png"} <= {p.name for p in out.iterdir()}

    (out / "bench.md").unlink()
    result = runner.invoke(app, ["report", str(out / "bench.json")])
    assert result.exit_code == 0 and (out / "bench.md").is_file()

    again = runner.invoke(app, args)  # the report exists: refused without --force, before anything runs
    assert again.exit_code == 3 and "--force" in again.stderr
    assert json.loads((out / "bench.json").read_text()) == data


@pytest.mark.gpu
def test_bench_on_cuda(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """On a CUDA machine with onnxruntime-gpu: both CUDA backends run and record device memory for torch."""
    from sleb_deploy.bench.backends import unavailable

    missing = [note for key in ("ort-cuda", "torch-cuda") if (note := unavailable(key))]
    if missing:  # probed when the test runs, never at import or collection
        pytest.skip("; ".join(missing))
    workspace: Path = request.getfixturevalue("workspace")  # exported only where the test can run
    text = str(workspace.parent.parent / "text.txt")
    args = ["bench", "--workspace", str(workspace), "--out", str(tmp_path / "r"), "--text", text, *SHORT,
            "--backends", "ort-cuda,torch-cuda", "--no-harness-check"]  # fmt: skip
    result = _child("-c", DRIVER, *args)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "r" / "bench.json").read_text())
    assert [b["status"] for b in data["backends"]] == ["ran", "ran"]
    torch_ok = [r for r in data["records"] if r["backend"] == "torch-cuda" and r["status"] == "ok"]
    assert torch_ok and all(r["cuda_max_allocated_mb"] > 0 for r in torch_ok)


@pytest.fixture(scope="module")
def child(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """bench_child.py's checks, run once in a fresh interpreter."""
    text = str(workspace.parent.parent / "text.txt")
    out = tmp_path_factory.mktemp("child") / "r"
    result = _child(str(HERE / "bench_child.py"), str(workspace), str(out), text)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return data


def test_runners_generate_the_reference_tokens(child: dict[str, Any]) -> None:
    """The timed loops are real greedy generation: the tokens of Hugging Face's generate."""
    assert child["tokens"] == {"OrtRunner": True, "TorchRunner": True}


def test_interrupt_keeps_what_was_measured(child: dict[str, Any]) -> None:
    expected = {"returned_partial": True, "written_partial": True, "batches": [1], "md_says_partial": True}
    assert child["interrupt"] == expected


def test_bad_input(workspace: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--workspace", str(tmp_path / "nothing"), "--quiet"])
    assert result.exit_code == 3 and "sleb-deploy export" in result.stderr
    assert result.stderr.count("\n") == 1
    result = runner.invoke(app, ["bench", "--workspace", str(workspace), "--backends", "tensorrt", "--quiet"])
    assert result.exit_code == 4 and "NVIDIA GPU" in result.stderr
    result = runner.invoke(app, ["bench", "--workspace", str(workspace), "--backends", "onnx", "--quiet"])
    assert result.exit_code == 2 and "ort-cpu" in result.stderr
    result = runner.invoke(app, ["bench", "--workspace", str(workspace), "--batch-sizes", "1,x", "--quiet"])
    assert result.exit_code == 2 and "--batch-sizes" in result.stderr
    result = runner.invoke(app, ["bench", "--workspace", str(workspace), "--new-tokens", "1", "--quiet"])
    assert result.exit_code == 2 and "--new-tokens" in result.stderr
    result = runner.invoke(app, ["report", str(tmp_path / "bench.json")])
    assert result.exit_code == 3 and "sleb-deploy bench" in result.stderr
    assert not (tmp_path / "nothing").exists()
