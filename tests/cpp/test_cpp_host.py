"""The C++ host (engines/cpp) against the Python reference loop: the same greedy tokens, row for row, on a tiny
export of every family and on the default model's dense and pruned exports (batch > 1, left padding); its
C++-level checks through ctest; its one-line errors on bad input.

Nothing here needs a GPU; the TensorRT backend is refused with one line (this host is built without TensorRT
here), which is itself checked on a real TensorRT-RTX engine directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sleb_host_run import host_dir, host_tokens, one_line_error, prompts, python_tokens, run_host
from tiny import FAMILIES, VOCAB, ExportCache

MAX_NEW = 8


def test_ctest(sleb_host: Path) -> None:
    proc = subprocess.run(
        ["ctest", "--test-dir", str(sleb_host.parent), "--output-on-failure"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "100% tests passed" in proc.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_match_python_every_family(sleb_host: Path, exports: ExportCache, tmp_path: Path, family: str) -> None:
    directory = host_dir(exports, tmp_path, family)
    batch = prompts(np.random.default_rng(0), (5, 11, 2))  # left padding of 6 and 9 (beyond gemma's window of 4)
    expected = python_tokens(directory / "model.onnx", batch, MAX_NEW)
    assert host_tokens(sleb_host, directory, batch, "--max-new-tokens", str(MAX_NEW)) == expected


def test_tokens_match_python_fp16_last_logits(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    directory = host_dir(exports, tmp_path, "qwen3", dtype="fp16", last=True)
    batch = prompts(np.random.default_rng(1), (7, 3))
    expected = python_tokens(directory / "model.onnx", batch, MAX_NEW)
    assert host_tokens(sleb_host, directory, batch, "--max-new-tokens", str(MAX_NEW)) == expected


def test_eos_stops_rows_like_python(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    directory = host_dir(exports, tmp_path, "llama")
    batch = prompts(np.random.default_rng(2), (4, 6))
    free = python_tokens(directory / "model.onnx", batch, MAX_NEW)
    eos = free[0][2]  # row 0 ends at its third token; row 1 goes on (or ends too), filled with eos after
    expected = python_tokens(directory / "model.onnx", batch, MAX_NEW, eos=eos)
    got = host_tokens(sleb_host, directory, batch, "--max-new-tokens", str(MAX_NEW), "--eos", str(eos))
    assert got == expected and got[0][2] == eos


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_tokens_match_python_default_model(sleb_host: Path, default_exports: dict[str, Path], variant: str) -> None:
    from transformers import AutoTokenizer

    directory = default_exports[variant]
    tok = AutoTokenizer.from_pretrained(directory)
    texts = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived"]
    batch = [tok(t)["input_ids"] for t in texts]
    assert len({len(p) for p in batch}) == 2  # the short one is left-padded
    expected = python_tokens(directory / "model.onnx", batch, 12)
    assert host_tokens(sleb_host, directory, batch, "--max-new-tokens", "12") == expected


# --- bad input: one line on stderr, a non-zero exit -------------------------------------------------------


def test_missing_directory(sleb_host: Path, tmp_path: Path) -> None:
    one_line_error(run_host(sleb_host, tmp_path / "nope", [[1, 2]]), 3, "not found")


def test_directory_that_is_not_an_export(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    _, onnx, _ = exports.get("llama")
    os.link(onnx, tmp_path / "model.onnx")  # an ONNX made elsewhere: no export.json
    one_line_error(run_host(sleb_host, tmp_path, [[1, 2]]), 3, "no export.json")
    (tmp_path / "model.onnx").unlink()
    one_line_error(run_host(sleb_host, tmp_path, [[1, 2]]), 3, "not a sleb-deploy export")


def test_refuses_other_kv_contract_and_bad_manifest(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    directory = host_dir(exports, tmp_path, "llama")
    manifest = json.loads((directory / "export.json").read_text())
    manifest["graph"]["kv_cache"] = "paged"
    (directory / "export.json").write_text(json.dumps(manifest))
    one_line_error(run_host(sleb_host, directory, [[1, 2]]), 3, "graph.kv_cache is 'paged'")
    manifest["graph"]["kv_cache"] = "static"  # a concatenating graph that export.json calls static
    (directory / "export.json").write_text(json.dumps(manifest))
    one_line_error(run_host(sleb_host, directory, [[1, 2]]), 3, "the graph speaks the concat KV-cache contract")
    (directory / "export.json").write_text('{"schema": "sleb-deploy/export@1", "graph": {')
    one_line_error(run_host(sleb_host, directory, [[1, 2]]), 3, "invalid JSON")


def test_prompt_over_the_limits(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    directory = host_dir(exports, tmp_path, "llama")  # config.json: max_position_embeddings 256
    long = [[5] * 250]
    one_line_error(run_host(sleb_host, directory, long, "--max-new-tokens", "8"), 2, "over the limit of 256")
    one_line_error(run_host(sleb_host, directory, [[5, VOCAB]]), 2, f"token id {VOCAB}")
    one_line_error(run_host(sleb_host, directory, "1 2 x"), 2, "'x' is not a token id")
    one_line_error(run_host(sleb_host, directory, ""), 2, "no prompt given")
    one_line_error(run_host(sleb_host, directory, [[1]], "--max-new-tokens", "0"), 2, "at least 1")


@pytest.mark.trt
def test_engine_directories_without_tensorrt(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    """A real TensorRT-RTX engine (built here on the CPU): its limits are checked from engine.json, then the
    plan is refused (built by TensorRT-RTX, or for a TensorRT this host does not link)."""
    pytest.importorskip("tensorrt_rtx")
    from sleb_deploy.engines import BuildConfig, build_engine

    source = host_dir(exports, tmp_path, "llama")
    engine = tmp_path / "engine"
    build_engine(source, engine, BuildConfig(max_batch=2, max_input_len=16, max_context_len=32), backend="tensorrt_rtx")
    one_line_error(run_host(sleb_host, engine, [[5] * 17]), 2, "max input length of 16")
    one_line_error(run_host(sleb_host, engine, [[5]] * 3), 2, "max batch of 2")
    one_line_error(run_host(sleb_host, engine, [[5] * 16], "--max-new-tokens", "18"), 2, "over the limit of 32")
    one_line_error(run_host(sleb_host, engine, [[5] * 4]), 3, "built by tensorrt_rtx")
    other = tmp_path / "other-trt"
    shutil.copytree(engine, other)
    manifest = json.loads((other / "engine.json").read_text())
    manifest["backend"] = {"module": "tensorrt", "version": "9.0.0.1"}
    (other / "engine.json").write_text(json.dumps(manifest))
    linked = subprocess.run([str(sleb_host), "--version"], capture_output=True, text=True, check=True).stdout
    if linked.strip().endswith("tensorrt none"):  # CI: no TensorRT to build against
        one_line_error(run_host(sleb_host, other, [[5] * 4]), 4, "built without TensorRT")
    else:  # a host built where TensorRT is installed (not 9.0.0)
        one_line_error(run_host(sleb_host, other, [[5] * 4]), 3, "a plan runs only on the TensorRT that built it")
