"""`sleb-deploy triton`: Triton model repositories for an exported ONNX directory. Registered in `cli.py`:

    app.command("triton")(triton_cmd)

Defaults come from `TritonConfig` / `GenerateSettings`. (`sleb-deploy build --triton DIR` writes the
`tensorrt_plan` repository of an engine; this command serves the ONNX graph.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from sleb_deploy.engines.triton_generate import GenerateSettings
from sleb_deploy.engines.triton_onnx import InstanceKind, TritonConfig, TritonKind, write_onnx_triton_repository

_D, _G = TritonConfig(), GenerateSettings()


def triton_cmd(
    onnx_dir: Annotated[Path, typer.Argument(help="an exported ONNX directory (with export.json)")],
    out: Annotated[Path, typer.Option(help="the model repository to write into (created if missing)")],
    kind: Annotated[
        TritonKind, typer.Option(help="onnxruntime (onnxruntime_onnx), generate (python backend), or both")
    ] = _D.kind,
    name: Annotated[str, typer.Option(help="name of the onnxruntime_onnx model")] = _D.name,
    generate_name: Annotated[str, typer.Option(help="name of the generate model")] = _D.generate_name,
    instance_kind: Annotated[InstanceKind, typer.Option(help="instance group kind of the models")] = _D.instance_kind,
    instances: Annotated[int, typer.Option(help="instances per model")] = _D.instances,
    device: Annotated[
        str, typer.Option(help="generate: auto (ONNX Runtime CUDA EP when present), cpu or cuda")
    ] = _G.device,
    threads: Annotated[int, typer.Option(help="generate: ONNX Runtime intra-op threads (0: default)")] = _G.threads,
    max_batch: Annotated[int, typer.Option(help="generate: most prompts per request")] = _G.max_batch,
    max_input_len: Annotated[int, typer.Option(help="generate: most prompt tokens")] = _G.max_input_len,
    max_new_tokens: Annotated[
        int, typer.Option(help="generate: new tokens when a request does not say")
    ] = _G.max_new_tokens,
    max_new_tokens_limit: Annotated[
        int, typer.Option(help="generate: the most new tokens a request may ask for")
    ] = _G.max_new_tokens_limit,
    force: Annotated[bool, typer.Option("--force", help="replace existing model directories")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout, nothing else")] = False,
) -> None:
    """Write Triton models for an exported ONNX directory: onnxruntime_onnx and a python-backend generate model."""
    from sleb_deploy.cli import run_stage  # here, not at the top: cli.py imports this module to register it
    from sleb_deploy.errors import UserInputError

    def run() -> list[Path]:
        if device not in ("auto", "cpu", "cuda"):
            raise UserInputError(f"--device {device!r}: choose auto, cpu or cuda")
        settings = GenerateSettings(
            device=device, threads=threads, max_batch=max_batch, max_input_len=max_input_len,
            max_new_tokens=max_new_tokens, max_new_tokens_limit=max_new_tokens_limit,
        )  # fmt: skip
        if min(max_batch, max_input_len, max_new_tokens, max_new_tokens_limit) < 1:
            raise UserInputError("--max-batch, --max-input-len and the --max-new-tokens options must be at least 1")
        if max_new_tokens > max_new_tokens_limit:
            raise UserInputError(f"--max-new-tokens {max_new_tokens} is over --max-new-tokens-limit")
        cfg = TritonConfig(
            kind=kind, name=name, generate_name=generate_name, instance_kind=instance_kind, instances=instances,
            generate=settings, force=force,
        )  # fmt: skip
        return write_onnx_triton_repository(onnx_dir, out, cfg)

    written = run_stage(run)
    if as_json:
        sys.stdout.write(json.dumps({"models": [str(p) for p in written]}) + "\n")
        return
    for path in written:
        typer.echo(f"{path.name}: {path}")
