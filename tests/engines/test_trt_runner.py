"""The TensorRT runner against ONNX Runtime on the same export: same tokens, logits within a per-dtype tolerance.

Marked ``gpu``: they need an NVIDIA GPU and a TensorRT module that runs on it (``tensorrt``; ``tensorrt_rtx``
on RTX GPUs only). Without one every test is skipped with the reason, at setup: nothing here touches CUDA at
import or collection (``torch.cuda`` is first called inside the ``gpu_backend`` fixture). CI has no GPU;
run them where one is at hand with ``pytest -m gpu tests/engines/test_trt_runner.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import FAMILIES, VOCAB, ExportCache

from sleb_deploy import contract

pytestmark = pytest.mark.gpu

# max |logit difference| allowed against ONNX Runtime CPU, per graph dtype (fp16 accumulates differently)
LOGITS_ATOL = {"fp32": 2e-3, "fp16": 5e-2}
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def gpu_backend() -> str:
    """The TensorRT module that builds and runs engines on this machine's GPU, or skip saying what is missing."""
    import torch

    from sleb_deploy.engines.build import resolve_backend
    from sleb_deploy.engines.limits import is_rtx
    from sleb_deploy.engines.trt_runner import cuda_gpu

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    backend = resolve_backend("auto")
    if backend is None:
        pytest.skip("needs TensorRT: pip install 'sleb-deploy[trt]'")
    gpu = cuda_gpu()
    assert gpu is not None
    if backend == "tensorrt_rtx" and not is_rtx(gpu["name"]):
        pytest.skip(f"only TensorRT-RTX is installed and {gpu['name']} is not an RTX GPU")
    return backend


def padded_prompts(rng: np.random.Generator, lengths: list[int], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded random prompts of the given lengths, as a host would batch them."""
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = rng.integers(3, vocab, size=n)
        mask[row, width - n :] = 1
    return ids, mask


def ort_steps(onnx_path: Path, ids: np.ndarray, mask: np.ndarray, tokens: np.ndarray) -> list[np.ndarray]:
    """ONNX Runtime's last-position logits for each step of a given continuation (teacher-forced)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    past_inputs = [i for i in session.get_inputs() if contract.PAST_NAME.match(i.name)]
    layers = len(past_inputs) // 2
    kv = np.dtype(contract.element_type(ort=past_inputs[0].type).numpy or "float32")
    heads, dim = int(past_inputs[0].shape[1]), int(past_inputs[0].shape[3])
    past = {n: np.zeros((ids.shape[0], heads, 0, dim), dtype=kv) for n in contract.past_names(layers)}
    pos = contract.position_ids(mask, mask.shape[1])
    cur, steps = ids, []
    for k in range(tokens.shape[1]):
        feeds = {contract.INPUT_IDS: cur, contract.ATTENTION_MASK: mask,
                 contract.POSITION_IDS: pos[:, -cur.shape[1]:], **past}  # fmt: skip
        outs = session.run(None, feeds)
        steps.append(outs[0][:, -1, :].astype(np.float32))
        past = dict(zip(contract.past_names(layers), outs[1:], strict=True))
        cur = tokens[:, k : k + 1]
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        pos = np.concatenate([pos, pos[:, -1:] + 1], axis=1)
    return steps


def check_parity(onnx_dir: Path, engine_dir: Path, dtype: str, ids: np.ndarray, mask: np.ndarray) -> None:
    from sleb_deploy.engines.trt_runner import TrtGenerator
    from sleb_deploy.export.ort_generate import OrtGenerator

    expected = OrtGenerator(onnx_dir / "model.onnx").generate(ids, mask, NEW_TOKENS)
    runner = TrtGenerator(engine_dir)
    try:
        got, logits = runner.generate(ids, mask, NEW_TOKENS, return_logits=True)
    finally:
        runner.close()
    reference = ort_steps(onnx_dir / "model.onnx", ids, mask, got[:, ids.shape[1] :])
    worst = max(float(np.abs(a - b).max()) for a, b in zip(logits, reference, strict=True))
    assert worst <= LOGITS_ATOL[dtype], f"max |logits TensorRT - ORT| = {worst:.3g}"
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_tiny_family_matches_onnx_runtime(
    gpu_backend: str, exports: ExportCache, family: str, dtype: str, tmp_path: Path
) -> None:
    from sleb_deploy.engines import BuildConfig, build_engine

    _, path, _ = exports.get(family, dtype=dtype)
    built = build_engine(path.parent, tmp_path / "e", BuildConfig(max_batch=4, max_input_len=16, max_context_len=32),
                         backend=gpu_backend)  # fmt: skip
    assert built.directory is not None
    ids, mask = padded_prompts(np.random.default_rng(0), [5, 12, 1], VOCAB)
    check_parity(path.parent, built.directory, dtype, ids, mask)


def test_refuses_requests_over_the_engine(gpu_backend: str, exports: ExportCache, tmp_path: Path) -> None:
    from sleb_deploy.engines import BuildConfig, build_engine
    from sleb_deploy.engines.trt_runner import TrtGenerator
    from sleb_deploy.errors import UserInputError

    _, path, _ = exports.get("llama")
    built = build_engine(path.parent, tmp_path / "e", BuildConfig(max_batch=2, max_input_len=8, max_context_len=16),
                         backend=gpu_backend)  # fmt: skip
    assert built.directory is not None
    runner = TrtGenerator(built.directory)
    ones = np.ones((3, 4), dtype=np.int64)
    with pytest.raises(UserInputError, match="max batch of 2"):
        runner.generate(ones, ones, 2)
    with pytest.raises(UserInputError, match="max input length of 8"):
        runner.generate(np.ones((1, 9), dtype=np.int64), np.ones((1, 9), dtype=np.int64), 2)
    with pytest.raises(UserInputError, match="max context of 16"):
        runner.generate(np.ones((1, 8), dtype=np.int64), np.ones((1, 8), dtype=np.int64), 9)
    runner.close()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_default_model_matches_onnx_runtime(
    gpu_backend: str, default_exports: dict[str, Path], variant: str, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from sleb_deploy.engines import BuildConfig, build_engine

    onnx_dir = default_exports[variant]
    built = build_engine(onnx_dir, tmp_path / "e", BuildConfig(max_batch=4, max_input_len=64, max_context_len=128),
                         backend=gpu_backend)  # fmt: skip
    assert built.directory is not None
    tok: Any = AutoTokenizer.from_pretrained(str(onnx_dir))
    tok.padding_side = "left"
    enc = tok(["The capital of France is", "Once upon a time, in a small village by the sea,"],
              return_tensors="np", padding=True)  # fmt: skip
    check_parity(onnx_dir, built.directory, "fp32", enc["input_ids"], enc["attention_mask"])


def ort_static_run(onnx_path: Path, ids: np.ndarray, mask: np.ndarray, cache_len: int) -> tuple[Any, list[Any]]:
    """OrtGenerator's static loop (contract.greedy_static_loop) with each step's chosen logits recorded."""
    from sleb_deploy.export.ort_generate import OrtGenerator

    gen = OrtGenerator(onnx_path)
    cache = gen.cache(ids.shape[0], cache_len)
    rows = np.arange(ids.shape[0])
    steps: list[np.ndarray] = []

    def step(cur: np.ndarray, m: np.ndarray, pos: np.ndarray, write: np.ndarray, at: np.ndarray) -> np.ndarray:
        logits: np.ndarray = gen.run_static(cur, m, pos, write, cache)[rows, at].astype(np.float32)
        steps.append(logits)
        return logits

    tokens = contract.greedy_static_loop(step, ids, mask, NEW_TOKENS, cache_len, last_logits_only=gen.last_logits_only)
    return tokens, steps


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_static_engine_matches_onnx_runtime(gpu_backend: str, family: str, dtype: str, tmp_path: Path) -> None:
    """A static-cache engine (KVCacheUpdate, each layer's buffer bound as past and present at one address):
    TrtGenerator's tokens equal OrtGenerator's on the same fixed-length export, left and right padded, and every
    step's logits agree within the dtype's tolerance."""
    from tiny import tiny_model

    from sleb_deploy.engines import BuildConfig, build_engine
    from sleb_deploy.engines.trt_runner import TrtGenerator
    from sleb_deploy.errors import UserInputError
    from sleb_deploy.export.onnx_graph import export_decoder_onnx

    cache_len = 32
    onnx_dir = tmp_path / "onnx"
    export_decoder_onnx(tiny_model(family, 3, scaled=False), onnx_dir, dtype=dtype, kv_cache="static",
                        max_cache_len=cache_len)  # fmt: skip
    built = build_engine(onnx_dir, tmp_path / "e", BuildConfig(max_batch=4, max_input_len=16), backend=gpu_backend)
    assert built.directory is not None and built.build_options["kv_cache"] == "static"
    left, mask = padded_prompts(np.random.default_rng(0), [5, 12, 1], VOCAB)
    right, rmask = np.zeros_like(left), np.zeros_like(mask)
    for row, n in enumerate(mask.sum(axis=1)):
        right[row, :n], rmask[row, :n] = left[row, left.shape[1] - n :], 1
    runner = TrtGenerator(built.directory)
    try:
        assert runner.engine.kv_bytes > 0 and len(runner.engine._kv) == 1  # one aliased set, no ping-pong
        for ids, m in ((left, mask), (right, rmask)):
            expected, reference = ort_static_run(onnx_dir / "model.onnx", ids, m, cache_len)
            got, logits = runner.generate(ids, m, NEW_TOKENS, return_logits=True)
            worst = max(float(np.abs(a - b).max()) for a, b in zip(logits, reference, strict=True))
            assert worst <= LOGITS_ATOL[dtype], f"max |logits TensorRT - ORT| = {worst:.3g}"
            np.testing.assert_array_equal(got, expected)
        with pytest.raises(UserInputError, match="32-slot KV cache buffer"):
            runner.generate(np.ones((1, 16), np.int64), np.ones((1, 16), np.int64), 18)
    finally:
        runner.close()
