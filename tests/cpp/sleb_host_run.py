"""Run ``sleb-host`` and the Python reference (``OrtGenerator``) on the same prompts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy.export.ort_generate import OrtGenerator

TIMING = re.compile(  # one line per phase: what a benchmark parses
    r"^sleb-host: timing backend=onnxruntime batch=\d+ phase=load ms=[\d.e+-]+\n"
    r"sleb-host: timing backend=onnxruntime batch=\d+ phase=prefill prompt_len=\d+ ms=[\d.e+-]+\n"
    r"sleb-host: timing backend=onnxruntime batch=\d+ phase=decode steps=\d+ ms_per_token=[\d.e+-]+$",
    re.M,
)


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


def python_tokens(onnx: Path, prompts: list[list[int]], max_new_tokens: int, eos: int | None = None) -> list[list[int]]:
    """``OrtGenerator`` on the prompts left-padded with 0 (the host's padding when no pad/eos is given)."""
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = 1
    fill = 0 if eos is None else eos  # the host's fill: --pad, else --eos, else 0
    out = OrtGenerator(onnx).generate(ids, mask, max_new_tokens, eos_token_id=eos, pad_token_id=fill)
    return [[int(t) for t in row] for row in out[:, length:]]
