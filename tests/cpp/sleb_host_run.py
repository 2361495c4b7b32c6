"""Run ``sleb-host`` and the Python reference (``OrtGenerator``) on the same prompts; tiny export directories as
the export stage writes them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from tiny import VOCAB, ExportCache, write_export_manifest

from sleb_deploy.export.ort_generate import OrtGenerator

TIMING = re.compile(  # one line per phase: what a benchmark parses
    r"^sleb-host: timing backend=onnxruntime batch=\d+ phase=load ms=[\d.e+-]+\n"
    r"sleb-host: timing backend=onnxruntime batch=\d+ phase=prefill prompt_len=\d+ ms=[\d.e+-]+\n"
    r"sleb-host: timing backend=onnxruntime batch=\d+ phase=decode steps=\d+ ms_per_token=[\d.e+-]+$",
    re.M,
)


def host_dir(
    exports: ExportCache,
    tmp_path: Path,
    family: str,
    dtype: str = "fp32",
    last: bool = False,
    kv_cache: str = "concat",
    max_cache_len: int | None = None,
) -> Path:
    """A tiny export in a directory of its own with an export.json and the model's config.json, as the export
    stage writes them (the cached export directory is shared with other tests and stays as it is)."""
    model, onnx, spec = exports.get(family, dtype=dtype, last=last, kv_cache=kv_cache, max_cache_len=max_cache_len)
    out = tmp_path / f"{family}-{dtype}-{int(last)}-{kv_cache}-{max_cache_len}"
    out.mkdir()
    for f in onnx.parent.iterdir():
        os.link(f, out / f.name)
    write_export_manifest(out, spec)
    model.config.to_json_file(out / "config.json")
    return out


def prompts(rng: np.random.Generator, lengths: tuple[int, ...]) -> list[list[int]]:
    return [[int(t) for t in rng.integers(3, VOCAB, n)] for n in lengths]


def run_host(host: Path, directory: Path, prompts: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``sleb-host directory --json ...`` with ``prompts`` (a list of lists, or raw text) on stdin."""
    stdin = prompts if isinstance(prompts, str) else json.dumps(prompts)
    return subprocess.run([str(host), str(directory), *args], input=stdin, capture_output=True, text=True, timeout=600)


def host_tokens(host: Path, directory: Path, prompts: list[list[int]], *args: str) -> list[list[int]]:
    proc = run_host(host, directory, prompts, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    assert TIMING.search(proc.stderr), proc.stderr
    out: list[list[int]] = json.loads(proc.stdout)["tokens"]
    return out


def python_tokens(
    onnx: Path, prompts: list[list[int]], max_new_tokens: int, eos: int | None = None, max_cache_len: int | None = None
) -> list[list[int]]:
    """``OrtGenerator`` on the prompts left-padded with 0 (the host's padding when no pad/eos is given);
    ``max_cache_len``: a static graph's buffer length (default: the graph's, else prompt + new tokens)."""
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = 1
    fill = 0 if eos is None else eos  # the host's fill: --pad, else --eos, else 0
    gen = OrtGenerator(onnx)
    kwargs = {} if max_cache_len is None else {"max_cache_len": max_cache_len}
    out = gen.generate(ids, mask, max_new_tokens, eos_token_id=eos, pad_token_id=fill, **kwargs)
    return [[int(t) for t in row] for row in out[:, length:]]


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sleb-host: error: ") and needle in lines[0], proc.stderr
