"""The export stage: HF checkpoint in, validated ONNX directory + `export.json` out (DESIGN.md section 3).

The output directory is what hosts load: `model.onnx` (+ `model.onnx_data`), `config.json`,
`generation_config.json` and the tokenizer files, so Optimum's `ORTModelForCausalLM.from_pretrained(dir)` and
onnxruntime-genai-style hosts can use it as it is. Validation (ONNX Runtime vs PyTorch: prefill and two chained
decode steps at batch 2 with left padding) runs before the directory is renamed into place (unless
`--no-validate`, recorded as skipped); beyond the dtype's tolerance nothing is written.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from sleb_deploy._optional import require
from sleb_deploy.artifacts import check_writable_target, environment, staged_dir, write_json
from sleb_deploy.config import ExportConfig
from sleb_deploy.contract import CONCAT, GRAPH_DTYPES, element_type
from sleb_deploy.errors import UserInputError, ValidationError
from sleb_deploy.export.manifest import ExportManifest
from sleb_deploy.models.load import ModelSource, load_model, load_tokenizer, local_checksum, resolve_model
from sleb_deploy.prune.manifest import SlebManifest

# Max |logits| and |KV| difference ONNX Runtime vs PyTorch (fp32 reference). fp16 rounds activations to
# 11 bits over every block; bf16 graphs cannot be fed from numpy, so ORT validation is skipped for them.
TOLERANCE = {"fp32": 1e-3, "fp16": 0.25}


def _pruning_summary(source: ModelSource) -> dict[str, Any]:
    if source.kind == "hub" or not SlebManifest.exists(Path(source.location)):
        return {"pruned": False}
    sleb = SlebManifest.read(Path(source.location))
    return {
        "pruned": True,
        "method": sleb.method["metric"],
        "source_model": sleb.model.spec,
        "num_blocks_before": sleb.model.num_blocks,
        "removal_order": sleb.removal_order,
        "kept_blocks": sleb.kept_blocks,
        "perplexity": sleb.perplexity,
    }


def _legacy_rope(rope: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    theta = rope.get("rope_theta")
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    plain = scaling.get("rope_type", "default") == "default" and set(scaling) <= {"rope_type"}
    return theta, None if plain else scaling


def _host_config(model: Any, dtype: str) -> dict[str, Any]:
    """config.json for hosts, readable by transformers 5 and by the transformers < 4.58 that Optimum needs.

    Old transformers ignores `rope_parameters` and silently falls back to its default rope base (measured: a
    10000 base instead of 100000 on the default model), so the rope settings are also spelled the old way:
    `rope_theta`, `rope_scaling`, `partial_rotary_factor`, and Gemma-3's per-layer-type `rope_local_base_freq`.
    `dtype` is the graph's precision; `torch_dtype` repeats it for transformers < 4.56.
    """
    config: dict[str, Any] = model.config.to_dict()
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope or "rope_type" in rope:
            theta, scaling = _legacy_rope(rope)
        else:  # one entry per layer type (Gemma-3)
            theta, scaling = _legacy_rope(rope.get("full_attention", {}))
            local = rope.get("sliding_attention", {}).get("rope_theta")
            if local is not None:
                config.setdefault("rope_local_base_freq", local)
        if theta is not None:
            config.setdefault("rope_theta", theta)
        if scaling is not None and not config.get("rope_scaling"):
            config["rope_scaling"] = scaling
        if "partial_rotary_factor" in rope:
            config.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    config["dtype"] = config["torch_dtype"] = element_type(key=dtype).torch
    config["use_cache"] = True
    return config


def _legacy_tokenizer_config(directory: Path) -> None:
    """transformers 5 names its fast tokenizer class `TokenizersBackend`, which transformers < 5 cannot load;
    `PreTrainedTokenizerFast` loads the same tokenizer.json in both."""
    path = directory / "tokenizer_config.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("tokenizer_class") == "TokenizersBackend":
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
            write_json(path, data)


def export_checkpoint(model_spec: str, out: Path, cfg: ExportConfig) -> ExportManifest:
    """Export, validate and lay out one checkpoint (dense or pruned) as an ONNX directory."""
    if cfg.dtype not in GRAPH_DTYPES:
        raise UserInputError(f"--dtype {cfg.dtype} is not one of {', '.join(GRAPH_DTYPES)}")
    if cfg.static_attention is not None and cfg.kv_cache != "static":
        raise UserInputError("--static-attention applies to --kv-cache static only")
    for module in ("onnx", "onnxscript", "onnxruntime"):  # a missing extra fails now, before the model loads
        require(module, "onnx")
    start = time.perf_counter()
    out = Path(out)
    check_writable_target(out, cfg.force)
    source = resolve_model(model_spec, checksum=False)
    # The weights' checksum (a local checkpoint's files hashed) runs beside the export: hashlib and file reads
    # release the GIL, the trace is one Python thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        checksum = pool.submit(local_checksum, source)
        return _export_checkpoint(source, checksum, out, cfg, start)


def _export_checkpoint(
    source: ModelSource, checksum: Future[str | None], out: Path, cfg: ExportConfig, start: float
) -> ExportManifest:
    from sleb_deploy.export.onnx_graph import export_decoder_onnx
    from sleb_deploy.export.streamed import export_streamed, offloaded_reference, streamable
    from sleb_deploy.export.validate import validate_against_torch

    tokenizer = load_tokenizer(source)
    # The static-cache variant is traced from the model in memory (export/static_cache.py); the concatenating
    # graph streams from a local safetensors checkpoint.
    stream = cfg.kv_cache == CONCAT and source.kind != "hub" and streamable(Path(source.location))
    # Streamed (export/streamed.py): weights written tensor by tensor from the safetensors, the reference
    # offloaded to them; at most one copy of the graph's weights in memory (ONNX Runtime's, while validating).
    model = offloaded_reference(Path(source.location)) if stream else load_model(source, dtype="fp32")
    static_options = {"kv_cache": cfg.kv_cache, "max_cache_len": cfg.max_cache_len}
    static_options["static_attention"] = cfg.static_attention
    with staged_dir(out, cfg.force) as tmp:
        export = partial(export_streamed, Path(source.location)) if stream else partial(export_decoder_onnx, model)
        spec = export(
            tmp,
            dtype=cfg.dtype,
            variant=cfg.variant,
            last_logits_only=cfg.last_logits_only,
            external_data=cfg.external_data,
            **({} if stream else static_options),
        )
        check: Any = partial(validate_against_torch, lean=True) if stream else validate_against_torch
        if cfg.kv_cache == "static":
            from sleb_deploy.export.validate_static import validate_static_against_torch as check
        validation = _validate(model, tmp / "model.onnx", cfg, check)
        validation["reference"] = "offloaded" if stream else "in_memory"
        write_json(tmp / "config.json", _host_config(model, cfg.dtype))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _legacy_tokenizer_config(tmp)
        manifest = ExportManifest(
            model=replace(source, checksum=checksum.result()),
            graph=spec,
            validation=validation,
            pruning=_pruning_summary(source),
            options=asdict(cfg),
            files={p.name: p.stat().st_size for p in sorted(tmp.iterdir())},
            seconds=round(time.perf_counter() - start, 2),
            environment=environment(),
        )
        manifest.write(tmp)  # last: its presence means the directory is complete
    manifest.directory = out.absolute()
    return manifest


def _validate(model: Any, onnx_path: Path, cfg: ExportConfig, validate: Any) -> dict[str, Any]:
    if not cfg.validate:
        return {"status": "skipped", "reason": "--no-validate: the graph was not compared with PyTorch"}
    if cfg.dtype == "bf16":
        return {"status": "skipped", "reason": "ONNX Runtime cannot be fed bf16 from numpy; export fp32/fp16 to check"}
    tol = cfg.tolerance if cfg.tolerance is not None else TOLERANCE[cfg.dtype]
    report: dict[str, Any] = validate(model, onnx_path, batch=2, prompt_len=7, decode_steps=2, left_pad=True)
    report["tolerance"] = tol
    worst = max(report["max_logits"], report["max_kv"])
    if not report["present_shapes_ok"]:
        raise ValidationError(f"ONNX presents have wrong shapes ({report['steps']}); this is a bug, please report it")
    if not worst <= tol:  # also catches NaN
        raise ValidationError(
            f"ONNX Runtime differs from PyTorch by {worst:.3g} (logits {report['max_logits']:.3g}, "
            f"KV {report['max_kv']:.3g}) > tolerance {tol:g}; nothing written. Try --variant opset18 or fp32"
        )
    report["status"] = "passed"
    return report
