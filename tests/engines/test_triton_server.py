"""A real Triton server: `tritonserver` 2.51 from nvidia-pytriton serves the `generate` model over the default
model's dense and pruned exports; tritonclient sends batched, padded prompts over HTTP and gRPC on 127.0.0.1
and the tokens must equal our Python generator's (OrtGenerator).

The server and its python backend live in their own environment (`bash scripts/triton_env.sh` makes
`.venv-triton`; CI builds it beside the main one; SLEB_TRITON_VENV points elsewhere). Without it the tests skip
with that instruction, except under CI (CI=true), where a missing environment is a failure. The test starts
the server itself (explicit model control, free ports, by PID, bounded waits; SIGTERM then SIGKILL on
teardown) and prints the server's version and the models' load times (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleb_deploy.engines.triton_server import ServerLayout, TritonServer, TritonServerError

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = Path(os.environ.get("SLEB_TRITON_VENV", ROOT / ".venv-triton"))
CLIENT = Path(__file__).with_name("triton_client.py")
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):",
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def layout() -> ServerLayout:
    if not (TRITON_VENV / "bin" / "python").is_file():
        message = f"no Triton environment at {TRITON_VENV}: run `bash scripts/triton_env.sh` (or set SLEB_TRITON_VENV)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must build it (.ci/run)")
        pytest.skip(message)
    return ServerLayout.of_venv(TRITON_VENV)


def run_client(layout: ServerLayout, server: TritonServer, model: str, requests: list[dict[str, Any]],
               tmp_path: Path, repeat: int = 1) -> dict[str, Any]:  # fmt: skip
    """triton_client.py in the Triton environment (tritonclient HTTP + gRPC): one result per request."""
    case = tmp_path / f"case-{model}.json"
    case.write_text(json.dumps({
        "http": server.http_url, "grpc": server.grpc_url, "model": model, "requests": requests, "repeat": repeat,
    }))  # fmt: skip
    proc = subprocess.run(
        [str(layout.bin / "python"), str(CLIENT), str(case)], capture_output=True, text=True,
        env=layout.environment(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"triton_client.py failed: {proc.stderr[-3000:]}\n{server.log_tail()}"
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def served(
    layout: ServerLayout, default_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One server over a repository holding `dense` and `pruned` generate models (as `sleb-deploy triton`
    writes them), both loaded; stopped (and checked stopped) at the end."""
    from sleb_deploy.engines.triton_generate import GenerateSettings
    from sleb_deploy.engines.triton_onnx import TritonConfig, TritonKind, write_onnx_triton_repository

    repo = tmp_path_factory.mktemp("triton-repo")
    for variant in ("dense", "pruned"):
        cfg = TritonConfig(kind=TritonKind.GENERATE, generate_name=variant, generate=GenerateSettings(device="cpu"))
        write_onnx_triton_repository(default_exports[variant], repo, cfg)
    server = TritonServer(layout, repo, log=repo.parent / "tritonserver.log")
    try:
        ready = server.start(timeout=60)
        version = server.metadata()["version"]
        loads = {variant: server.load(variant, timeout=180) for variant in ("dense", "pruned")}
        print(f"\ntritonserver {version}: ready in {ready:.2f} s; generate model load "
              + ", ".join(f"{k} {v:.2f} s" for k, v in loads.items()))  # fmt: skip
        assert version.startswith("2.")
        yield server
    finally:
        proc = server.proc
        server.stop()
        assert proc is None or proc.returncode is not None


def expected_tokens(export_dir: Path) -> tuple[list[list[int]], dict[str, Any]]:
    """OrtGenerator's new tokens for PROMPTS (tokenizer, left padding, greedy, EOS stop) and the request."""
    from transformers import AutoTokenizer

    from sleb_deploy.export.ort_generate import OrtGenerator

    tok = AutoTokenizer.from_pretrained(export_dir)
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="np", padding=True)
    assert enc.attention_mask[0, 0] == 0 and enc.attention_mask[1].all(), "the prompts should need left padding"
    gen = json.loads((export_dir / "generation_config.json").read_text())
    eos, pad = gen.get("eos_token_id"), gen.get("pad_token_id", gen.get("eos_token_id"))
    out = OrtGenerator(export_dir / "model.onnx").generate(
        enc.input_ids, enc.attention_mask, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad
    )
    new = out[:, enc.input_ids.shape[1] :].tolist()
    # The same batch as token ids, right-padded this time: the model re-packs rows to the left.
    ids, mask = [], []
    width = enc.input_ids.shape[1]
    for row, m in zip(enc.input_ids.tolist(), enc.attention_mask.tolist(), strict=True):
        tokens = [t for t, k in zip(row, m, strict=True) if k]
        ids.append(tokens + [pad] * (width - len(tokens)))
        mask.append([1] * len(tokens) + [0] * (width - len(tokens)))
    return new, {"input_ids": ids, "attention_mask": mask, "max_new_tokens": MAX_NEW_TOKENS}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_generate_model_returns_our_tokens(
    variant: str, served: TritonServer, layout: ServerLayout, default_exports: dict[str, Path], tmp_path: Path
) -> None:
    expected, ids_request = expected_tokens(default_exports[variant])
    text_request = {"text": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS}
    report = run_client(layout, served, variant, [text_request, ids_request], tmp_path)
    for protocol in ("http", "grpc"):
        for result in report[protocol]:
            assert "error" not in result, f"{protocol}: {result.get('error')}"
            assert result["output_ids"] == expected, protocol
            assert len(result["text_output"]) == len(PROMPTS) and len(result["output_lengths"]) == len(PROMPTS)
    assert report["http"][0]["text_output"] == report["grpc"][1]["text_output"]


@pytest.mark.slow
def test_generate_model_refuses_bad_requests(served: TritonServer, layout: ServerLayout, tmp_path: Path) -> None:
    requests = [
        {"input_ids": [[1]] * 17, "max_new_tokens": 2},  # default max_batch is 16
        {"text": ["hello"], "max_new_tokens": 5000},
        {"text": ["hello"], "input_ids": [[1, 2]]},
    ]
    report = run_client(layout, served, "pruned", requests, tmp_path)
    for protocol in ("http", "grpc"):
        errors = [r.get("error", "") for r in report[protocol]]
        assert "batch 17 is over this model's max_batch 16" in errors[0], errors[0]
        assert "max_new_tokens must be 1..1024" in errors[1], errors[1]
        assert "either text or input_ids" in errors[2], errors[2]


def test_server_that_does_not_come_up_fails_with_its_log(layout: ServerLayout, tmp_path: Path) -> None:
    server = TritonServer(layout, tmp_path / "no-such-repository", log=tmp_path / "server.log")
    started = time.perf_counter()
    with pytest.raises(TritonServerError, match="exited with code") as err:
        server.start(timeout=30)
    assert time.perf_counter() - started < 30
    assert "no-such-repository" in str(err.value)  # the log tail names what is wrong
    assert server.proc is not None and server.proc.poll() is not None
    server.stop()


def test_bad_model_fails_to_load_with_its_log(layout: ServerLayout, tmp_path: Path) -> None:
    """A generate model whose graph is missing: the load fails with the backend's reason, the server stays up."""
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    from sleb_deploy.engines.triton_generate import GenerateSettings
    from sleb_deploy.engines.triton_onnx import MODEL_PY, InstanceKind, generate_config_pbtxt

    (repo / "broken" / "1" / "model.py").write_text(MODEL_PY)
    (repo / "broken" / "config.pbtxt").write_text(generate_config_pbtxt("broken", GenerateSettings(), InstanceKind.CPU))
    with TritonServer(layout, repo, log=tmp_path / "server.log") as server:
        with pytest.raises(TritonServerError, match="could not load model broken") as err:
            server.load("broken", timeout=60)
        assert "model.onnx" in str(err.value)
        assert server.metadata()["name"] == "triton"  # still serving


def test_generate_model_serves_a_static_graph(layout: ServerLayout, llama_dir: Path, tmp_path: Path) -> None:
    """A `--kv-cache static` export behind the generate model (the one Triton model that can serve that
    contract): the server's tokens, text and padded ids alike, are the concatenating graph's under OrtGenerator."""
    from sleb_deploy.engines.triton_generate import GenerateSettings
    from sleb_deploy.engines.triton_onnx import TritonConfig, TritonKind, write_onnx_triton_repository
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    export_checkpoint(str(llama_dir), tmp_path / "static", ExportConfig(kv_cache="static"))
    export_checkpoint(str(llama_dir), tmp_path / "concat", ExportConfig())
    repo = tmp_path / "repo"
    cfg = TritonConfig(kind=TritonKind.GENERATE, generate_name="static", generate=GenerateSettings(device="cpu"))
    write_onnx_triton_repository(tmp_path / "static", repo, cfg)
    expected, ids_request = expected_tokens(tmp_path / "concat")
    with TritonServer(layout, repo, log=tmp_path / "server.log") as server:
        server.load("static", timeout=120)
        requests = [{"text": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS}, ids_request]
        report = run_client(layout, server, "static", requests, tmp_path)
    for protocol in ("http", "grpc"):
        for result in report[protocol]:
            assert "error" not in result, f"{protocol}: {result.get('error')}"
            assert result["output_ids"] == expected, protocol
