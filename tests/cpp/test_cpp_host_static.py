"""The C++ host on static KV-cache exports (``--kv-cache static``, engines/README.md section 5c): the same greedy
tokens as the concatenating export of the same model and as ``OrtGenerator`` on the static one, row for row
(left-padded batches, eos, a buffer longer than needed, a buffer fixed at export), on a tiny export of every
family and on the default model's dense and pruned exports; its one-line errors for a request the buffer
cannot hold, and a static TensorRT-RTX engine's limits read from engine.json.

The host's TensorRT static path is not run here (no TensorRT to build it against, no GPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sleb_host_run import host_dir, host_tokens, one_line_error, prompts, python_tokens, run_host
from tiny import FAMILIES, ExportCache

MAX_NEW = 8


def cache_len_of(host: Path, directory: Path, batch: list[list[int]], *args: str) -> int:
    proc = run_host(host, directory, batch, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kv_cache"] == "static"
    length: int = out["cache_len"]
    return length


@pytest.mark.parametrize("family", FAMILIES)
def test_static_tokens_match_concat_and_python(
    sleb_host: Path, exports: ExportCache, tmp_path: Path, family: str
) -> None:
    static = host_dir(exports, tmp_path, family, kv_cache="static")
    concat = host_dir(exports, tmp_path, family)
    batch = prompts(np.random.default_rng(0), (5, 11, 2))  # left padding of 6 and 9 (beyond gemma's window of 4)
    expected = python_tokens(concat / "model.onnx", batch, MAX_NEW)
    assert python_tokens(static / "model.onnx", batch, MAX_NEW) == expected
    new = ("--max-new-tokens", str(MAX_NEW))
    assert host_tokens(sleb_host, static, batch, *new) == expected
    assert host_tokens(sleb_host, concat, batch, *new) == expected
    assert cache_len_of(sleb_host, static, batch, *new) == 11 + MAX_NEW  # OrtGenerator's default: prompt + new
    # A buffer longer than the request: the unwritten slots stay masked.
    longer = python_tokens(static / "model.onnx", batch, MAX_NEW, max_cache_len=40)
    assert longer == expected
    assert host_tokens(sleb_host, static, batch, *new, "--max-cache-len", "40") == expected


def test_static_fp16_last_logits(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    static = host_dir(exports, tmp_path, "qwen3", dtype="fp16", last=True, kv_cache="static")
    batch = prompts(np.random.default_rng(1), (7, 3))
    expected = python_tokens(static / "model.onnx", batch, MAX_NEW)
    assert host_tokens(sleb_host, static, batch, "--max-new-tokens", str(MAX_NEW)) == expected


def test_static_eos_stops_rows_like_python(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    static = host_dir(exports, tmp_path, "llama", kv_cache="static")
    batch = prompts(np.random.default_rng(2), (4, 6))
    eos = python_tokens(static / "model.onnx", batch, MAX_NEW)[0][2]  # row 0 ends at its third token
    expected = python_tokens(static / "model.onnx", batch, MAX_NEW, eos=eos)
    got = host_tokens(sleb_host, static, batch, "--max-new-tokens", str(MAX_NEW), "--eos", str(eos))
    assert got == expected and got[0][2] == eos


def test_fixed_length_buffer(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    """``--max-cache-len 24`` at export: the host sizes its buffers from the graph, gives the concatenating
    graph's tokens, and refuses (one line, exit 2, before loading the session) a request the buffer cannot
    hold or another length."""
    fixed = host_dir(exports, tmp_path, "llama", kv_cache="static", max_cache_len=24)
    assert json.loads((fixed / "export.json").read_text())["graph"]["max_cache_len"] == 24
    concat = host_dir(exports, tmp_path, "llama")
    batch = prompts(np.random.default_rng(3), (9, 4))
    expected = python_tokens(concat / "model.onnx", batch, MAX_NEW)
    assert python_tokens(fixed / "model.onnx", batch, MAX_NEW) == expected
    assert host_tokens(sleb_host, fixed, batch, "--max-new-tokens", str(MAX_NEW)) == expected
    assert cache_len_of(sleb_host, fixed, batch, "--max-new-tokens", str(MAX_NEW)) == 24
    # 9 + 16 - 1 = 24 slots: fits exactly; one token more does not
    assert len(host_tokens(sleb_host, fixed, batch, "--max-new-tokens", "16")[0]) == 16
    one_line_error(
        run_host(sleb_host, fixed, batch, "--max-new-tokens", "17"),
        2,
        "the KV cache buffer has 24 slots, fewer than the 25 this request writes",
    )
    one_line_error(run_host(sleb_host, fixed, batch, "--max-cache-len", "30"), 2, "24 slots (fixed at export), not 30")


def test_bad_static_requests(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    static = host_dir(exports, tmp_path, "llama", kv_cache="static")
    batch = [[5] * 6]
    one_line_error(
        run_host(sleb_host, static, batch, "--max-new-tokens", "6", "--max-cache-len", "10"),
        2,
        "10 slots, fewer than the 11 this request writes (prompt 6 + 6 new tokens - 1)",
    )
    one_line_error(run_host(sleb_host, static, batch, "--max-cache-len", "0"), 2, "--max-cache-len must be at least 1")
    concat = host_dir(exports, tmp_path, "llama")
    one_line_error(run_host(sleb_host, concat, batch, "--max-cache-len", "32"), 2, "for static-cache exports")
    # export.json and the graph disagree: a static graph that export.json calls concat, a symbolic buffer it
    # calls fixed
    manifest = json.loads((static / "export.json").read_text())
    manifest["graph"]["kv_cache"] = "concat"
    (static / "export.json").write_text(json.dumps(manifest))
    one_line_error(run_host(sleb_host, static, batch), 3, "the graph speaks the static KV-cache contract")
    manifest["graph"].update(kv_cache="static", max_cache_len=64)
    (static / "export.json").write_text(json.dumps(manifest))
    one_line_error(run_host(sleb_host, static, batch), 3, "a symbolic number of slots")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_static_default_model(
    sleb_host: Path, default_exports: dict[str, Path], default_static_exports: dict[str, Path], variant: str
) -> None:
    from transformers import AutoTokenizer

    static = default_static_exports[variant]
    assert json.loads((static / "export.json").read_text())["graph"]["kv_cache"] == "static"
    tok = AutoTokenizer.from_pretrained(default_exports[variant])
    texts = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived"]
    batch = [tok(t)["input_ids"] for t in texts]
    assert len({len(p) for p in batch}) == 2  # the short one is left-padded
    expected = python_tokens(default_exports[variant] / "model.onnx", batch, 12)  # the concatenating export
    assert python_tokens(static / "model.onnx", batch, 12) == expected
    assert host_tokens(sleb_host, static, batch, "--max-new-tokens", "12") == expected


@pytest.mark.trt
def test_static_engine_limits_without_tensorrt(sleb_host: Path, exports: ExportCache, tmp_path: Path) -> None:
    """A real TensorRT-RTX engine of a fixed-length static export (built here on the CPU): the host reads the
    static contract and the buffer from engine.json, checks a request against it, then refuses the plan."""
    pytest.importorskip("tensorrt_rtx")
    from sleb_deploy.engines import BuildConfig, build_engine

    source = host_dir(exports, tmp_path, "llama", kv_cache="static", max_cache_len=24)
    engine = tmp_path / "engine"
    build_engine(source, engine, BuildConfig(max_batch=2, max_input_len=16, max_context_len=24), backend="tensorrt_rtx")
    assert json.loads((engine / "engine.json").read_text())["build_options"]["max_cache_len"] == 24
    one_line_error(run_host(sleb_host, engine, [[5] * 17]), 2, "max input length of 16")
    one_line_error(run_host(sleb_host, engine, [[5] * 16], "--max-new-tokens", "10"), 2, "24 slots, fewer than the 25")
    one_line_error(run_host(sleb_host, engine, [[5] * 16], "--max-new-tokens", "9"), 3, "built by tensorrt_rtx")
