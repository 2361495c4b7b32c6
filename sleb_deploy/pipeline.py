"""`sleb-deploy export`: the whole chain for one model (DESIGN.md section 1).

prune (or reuse a pruned checkpoint) -> export dense and pruned to ONNX -> validate both -> build TensorRT
engines when asked and a TensorRT module is importable. Workspace layout, relative to the working directory:

    export/<name>/hf-pruned/   pruned HF checkpoint + sleb.json     (prune stage)
    export/<name>/dense/       ONNX of the original model + export.json
    export/<name>/pruned/      ONNX of the pruned model + export.json
    engines/<name>/{dense,pruned}/   model.plan + engine.json      (engines stage, optional)

Every target is checked before any work starts, so a run that would collide fails in a second, not after
the pruning.

Both exports speak the KV-cache contract of ``cfg.export`` (``--kv-cache``). A static-cache graph builds into
a TensorRT engine only with a fixed buffer length (``engines/build.py``: TensorRT's ``KVCacheUpdate`` needs a
static sequence dimension), so when engines are built and ``--max-cache-len`` is not given, the buffers are
fixed at the build's ``max_context_len`` (the context the engines are built to serve) and the run says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleb_deploy import contract
from sleb_deploy.artifacts import check_writable_target
from sleb_deploy.config import EngineBackend, ExportConfig, PruneConfig
from sleb_deploy.engines.profiles import BuildConfig
from sleb_deploy.errors import ArtifactError, UserInputError
from sleb_deploy.export.manifest import ExportManifest
from sleb_deploy.prune.manifest import SlebManifest

# The settings that decide which blocks go; a reused checkpoint must match them.
_PRUNE_KEYS = ("model", "calib", "windows", "seq_len", "seed", "remove", "ratio", "metric", "blocks",
               "early_barrier", "latter_barrier", "window_bos")  # fmt: skip

Notify = Callable[[str], None]


@dataclass
class PipelineConfig:
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    name: str | None = None
    workspace: Path = Path("export")
    engines_dir: Path = Path("engines")
    pruned_checkpoint: Path | None = None  # reuse this pruned checkpoint (with sleb.json) instead of pruning
    engines: str = EngineBackend.AUTO.value
    force: bool = False


@dataclass
class PipelineResult:
    workspace: Path
    pruning: SlebManifest
    dense: ExportManifest
    pruned: ExportManifest
    engines: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace": str(self.workspace),
            "pruning": self.pruning.to_json(),
            "dense": self.dense.to_json(),
            "pruned": self.pruned.to_json(),
            "engines": self.engines,
        }


def _reusable(pruned_dir: Path, cfg: PruneConfig) -> bool:
    """A pruned checkpoint from an earlier run with the same block-choosing settings is reused."""
    if not SlebManifest.exists(pruned_dir):
        return False
    recorded = SlebManifest.read(pruned_dir).config
    defaults = PruneConfig()  # a key added since that sleb.json was written counts as its default
    if all(recorded.get(k, getattr(defaults, k)) == getattr(cfg, k) for k in _PRUNE_KEYS):
        return True
    raise ArtifactError(
        f"{pruned_dir} was pruned with other settings: pass --force to prune again, or "
        f"--pruned {pruned_dir} to export it as it is"
    )


def run_pipeline(
    cfg: PipelineConfig,
    on_candidate: Callable[[int, int, int, int], None] | None = None,
    notify: Notify = lambda message: None,
) -> PipelineResult:
    from sleb_deploy.engines.build import resolve_backend
    from sleb_deploy.export.stage import export_checkpoint
    from sleb_deploy.prune.stage import model_name, prune

    name = cfg.name or model_name(cfg.prune.model)
    ws = cfg.workspace / name
    hf_pruned = ws / "hf-pruned"
    dense_out, pruned_out = ws / "dense", ws / "pruned"
    backend = resolve_backend(cfg.engines)
    build = cfg.build.resolved()  # bad engine options fail now, not after the exports
    export_cfg = _export_config(cfg, backend is not None, build, notify)
    for target in (dense_out, pruned_out):
        check_writable_target(target, cfg.force)
    if backend is not None:
        for variant in ("dense", "pruned"):
            check_writable_target(cfg.engines_dir / name / variant, cfg.force)

    if cfg.pruned_checkpoint is not None:
        pruned_src = Path(cfg.pruned_checkpoint)
        if not SlebManifest.exists(pruned_src):
            raise ArtifactError(f"{pruned_src} has no sleb.json: give a directory written by `sleb-deploy prune`")
        pruning = SlebManifest.read(pruned_src)
        notify(f"using the pruned checkpoint {pruned_src}")
    elif not cfg.force and _reusable(hf_pruned, cfg.prune):
        pruned_src = hf_pruned
        pruning = SlebManifest.read(hf_pruned)
        notify(f"reusing {hf_pruned} (same pruning settings)")
    else:
        prune_cfg = PruneConfig(**{**cfg.prune.__dict__, "out": hf_pruned, "force": cfg.force})
        notify(f"pruning {prune_cfg.model} -> {hf_pruned}")
        pruning = prune(prune_cfg, on_candidate=on_candidate)
        pruned_src = hf_pruned
        notify(f"removed blocks {pruning.removal_order}")

    dense_model = pruning.model.reference  # the alias or hub id stays one in the dense export.json
    notify(f"exporting dense {dense_model} -> {dense_out}")
    dense = export_checkpoint(dense_model, dense_out, export_cfg)
    notify(f"exporting pruned {pruned_src} -> {pruned_out}")
    pruned = export_checkpoint(str(pruned_src), pruned_out, export_cfg)

    engines: dict[str, Any] = {"backend": backend, "kv_cache": export_cfg.kv_cache}
    if backend is None:
        engines["note"] = (
            "no TensorRT module: engines not built (pip install 'sleb-deploy[trt]' on an NVIDIA GPU machine, "
            "or Dockerfile.trt; 'sleb-deploy[trt-rtx]' builds with TensorRT-RTX on any machine)"
        )
    else:
        engines.update(_build_engines(cfg, name, backend, notify))
    return PipelineResult(ws.absolute(), pruning, dense, pruned, engines)


def _export_config(cfg: PipelineConfig, engines: bool, build: BuildConfig, notify: Notify) -> ExportConfig:
    """The export options of both graphs, checked before any work (a bad ``--kv-cache`` combination fails in
    a second, not after the pruning); a static graph headed for TensorRT gets a fixed buffer length."""
    from sleb_deploy.export.onnx_graph import check_kv_cache

    export_cfg = ExportConfig(**{**cfg.export.__dict__, "force": cfg.force})
    check_kv_cache(export_cfg.kv_cache, export_cfg.variant, export_cfg.max_cache_len)
    if export_cfg.kv_cache != contract.STATIC or not engines:
        return export_cfg
    if export_cfg.max_cache_len is None:
        export_cfg.max_cache_len = build.max_context_len
        notify(
            f"static KV cache: buffers fixed at {build.max_context_len} slots (--max-context-len) so TensorRT can "
            "build them; pass --max-cache-len to choose another length"
        )
    if build.max_input_len > export_cfg.max_cache_len:
        raise UserInputError(
            f"--max-input-len {build.max_input_len} exceeds the {export_cfg.max_cache_len}-slot static KV cache "
            "buffer: lower --max-input-len or raise --max-cache-len"
        )
    return export_cfg


def _build_engines(cfg: PipelineConfig, name: str, backend: str, notify: Notify) -> dict[str, Any]:
    from sleb_deploy.engines.build import build_engine

    out: dict[str, Any] = {}
    cache: Path | None = None
    for variant in ("dense", "pruned"):
        target = cfg.engines_dir / name / variant
        notify(f"building the {variant} engine with {backend} -> {target}")
        built = build_engine(
            cfg.workspace / name / variant, target, cfg.build, backend=backend, timing_cache=cache, force=cfg.force
        )
        cache = target / "timing.cache"  # the pruned build reuses the dense build's timings
        out[variant] = str(target.absolute())
        out[f"{variant}_seconds"] = round(built.build_seconds, 1)
    return out
