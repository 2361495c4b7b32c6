"""Build a TensorRT plan from an exported ONNX directory: ``model.plan`` + ``timing.cache`` + ``engine.json``.

Two backends share this code, because their Python APIs are the same for what we use:

- ``tensorrt`` (extra ``[trt]``, or the NGC image in ``Dockerfile.trt``): the users' path, on NVIDIA
  datacenter or desktop GPUs. It cannot be installed from the registries reachable in CI (its ``-libs``
  wheels fetch the libraries from NVIDIA at install time), so this path is not exercised by the tests.
- ``tensorrt_rtx`` (extra ``[trt-rtx]``, PyPI ``tensorrt-rtx-cu13``): TensorRT for RTX. It parses ONNX and
  builds plans on a CPU-only machine, which is how the tests prove that the exported graph parses and that
  this builder works for real. Its plans run only on RTX GPUs (not on Hopper/Ampere datacenter parts), and
  its timing cache calls are no-ops (the file is still written and reused, so the contract is the same).

Nothing here runs an engine: without a GPU a plan cannot even be deserialized. That is why the I/O table in
``engine.json`` is read from the network definition during the build, not from the engine.

The network is strongly typed (the engine's precision is its ONNX's, DESIGN.md section 5), the int64 inputs
stay int64 (a host binds int64 buffers for them), and an ONNX ``Attention`` layer is marked decomposable so
that an fp32 opset-23 graph builds where TensorRT has no fused fp32 kernel (a fused kernel is still used
where one exists).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.artifacts import check_writable_target, environment, staged_dir
from sleb_deploy.config import BACKEND_EXTRAS, EngineBackend
from sleb_deploy.engines.profiles import BuildConfig, Profile, optimization_profiles, profiles_to_json
from sleb_deploy.errors import ArtifactError, MissingDependencyError, UserInputError
from sleb_deploy.manifest import Manifest

PLAN, CACHE = "model.plan", "timing.cache"
_NO_TENSORRT = (
    "building an engine needs TensorRT: on a machine with an NVIDIA GPU, pip install 'sleb-deploy[trt]' "
    "(or use Dockerfile.trt); to check parsing and building on a CPU-only machine, "
    "pip install 'sleb-deploy[trt-rtx]' (TensorRT for RTX; its engines run on RTX GPUs only)"
)


@dataclass(kw_only=True)
class EngineManifest(Manifest):
    """``engine.json``: what was built, for which GPU and TensorRT, with which profiles; the build's result."""

    SCHEMA: ClassVar[str] = "sleb-deploy/engine@1"
    FILE: ClassVar[str] = "engine.json"

    backend: dict[str, str]  # {"module": "tensorrt" | "tensorrt_rtx", "version": ...}
    gpu: dict[str, str] | None  # the GPU the plan was tuned for; None for a CPU-only (TensorRT-RTX) build
    plan: str
    plan_bytes: int
    timing_cache: dict[str, Any]
    build_options: dict[str, Any]
    precision: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    int64_inputs: list[str]
    profiles: list[dict[str, Any]]
    io: list[dict[str, Any]]
    source: dict[str, Any]  # {"onnx": path, "export": the upstream export.json or None}
    build_seconds: float
    peak_rss_mib: float | None = None
    builder_warnings: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_cache(self) -> str:
        """The KV-cache contract the engine was built for (engines before the static one: concat)."""
        return str(self.build_options.get("kv_cache", contract.CONCAT))


def resolve_backend(choice: str) -> str | None:
    """The TensorRT module that builds engines for ``choice`` (an ``EngineBackend`` value), or None for none.

    ``auto``: ``tensorrt`` if importable, else ``tensorrt_rtx`` if importable, else None. An explicit module
    that is not installed is a ``MissingDependencyError`` naming its extra.
    """
    values = [b.value for b in EngineBackend]
    if choice not in values:
        raise UserInputError(f"unknown engine backend {choice!r} (choose from {', '.join(values)})")
    if choice == EngineBackend.NONE.value:
        return None
    if choice != EngineBackend.AUTO.value:
        if importlib.util.find_spec(choice) is None:
            raise MissingDependencyError(
                f"'{choice}' is needed for this step: pip install 'sleb-deploy[{BACKEND_EXTRAS[choice]}]'"
            )
        return choice
    return next((name for name in BACKEND_EXTRAS if importlib.util.find_spec(name) is not None), None)


def load_backend(choice: str) -> tuple[str, ModuleType]:
    """``(module name, module)`` for ``choice``; raises when nothing can build."""
    name = resolve_backend(choice)
    if name is None:
        raise MissingDependencyError(_NO_TENSORRT)
    return name, require(name, BACKEND_EXTRAS[name])


_LOGGERS: dict[str, Any] = {}


def recording_logger(trt: ModuleType) -> Any:
    """One recording logger per backend: TensorRT keeps the first logger of a process and ignores others."""
    if trt.__name__ not in _LOGGERS:

        class Recorder(trt.ILogger):  # type: ignore[name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[str, str]] = []

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.WARNING):
                    self.messages.append((severity.name, msg))

        _LOGGERS[trt.__name__] = Recorder()
    return _LOGGERS[trt.__name__]


def _export_summary(onnx_dir: Path) -> Any:
    """The upstream ``ExportManifest``, or None when the ONNX came from elsewhere."""
    from sleb_deploy.export.manifest import ExportManifest

    return ExportManifest.read(onnx_dir) if ExportManifest.exists(onnx_dir) else None


def parse_network(trt: ModuleType, logger: Any, onnx_path: Path) -> tuple[Any, Any, Any]:
    """``(builder, network, parser)``: ``onnx_path`` parsed into a strongly typed network (the parser must
    outlive the network: it owns the weights)."""
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    net = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(net, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves model.onnx_data next to it
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"{trt.__name__} could not parse {onnx_path}: {errors[0] if errors else 'unknown error'}")
    return builder, net, parser


def graph_dims(net: Any, onnx_path: Path) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` read from the parsed network's inputs, checked for our names."""
    names = [net.get_input(i).name for i in range(net.num_inputs)]
    layers = {int(m.group(1)) for n in names if (m := contract.PAST_NAME.match(n))}
    num_layers = max(layers) + 1 if layers else 0
    contracts = [set(contract.input_names(num_layers, kv)) for kv in contract.KV_CACHE_CONTRACTS]
    if num_layers == 0 or set(names) not in contracts:
        raise ArtifactError(
            f"{onnx_path} does not have the KV-cache inputs of a sleb-deploy export "
            f"(input_ids, attention_mask, position_ids, past_key_values.{{i}}.key|value); got {names[:6]}..."
        )
    first = contract.past_names(1)[0]
    shape = list(net.get_input(names.index(first)).shape)
    if len(shape) != 4 or shape[1] < 1 or shape[3] < 1:
        raise ArtifactError(f"{onnx_path}: {first} has shape {shape}, expected [B, heads, past, dim]")
    return num_layers, int(shape[1]), int(shape[3])


_SYMBOLIC_CACHE = "must have a static sequence length dimension"


def static_cache_len(net: Any) -> int | None:
    """A static-cache graph's buffer length (``max_cache_len``), None for the concatenating contract."""
    names = [net.get_input(i).name for i in range(net.num_inputs)]
    if contract.WRITE_INDICES not in names:
        return None
    return int(net.get_input(names.index(contract.past_names(1)[0])).shape[2])


def _parse(trt: ModuleType, logger: Any, onnx_path: Path) -> tuple[Any, Any, Any]:
    """``parse_network``, with TensorRT's refusal of a static-cache graph whose buffer length is symbolic
    ("The KV cache tensor must have a static sequence length dimension") turned into what to do about it."""
    try:
        return parse_network(trt, logger, onnx_path)
    except ArtifactError as err:
        if _SYMBOLIC_CACHE in str(err) or any(_SYMBOLIC_CACHE in m for _, m in logger.messages):
            raise UserInputError(
                f"{onnx_path} is a static-cache graph with a symbolic buffer length; TensorRT needs a fixed one: "
                "export it with --kv-cache static --max-cache-len N"
            ) from err
        raise


def _io_table(net: Any) -> list[dict[str, Any]]:
    """Name, direction, dtype and dims of every binding; -1 dims labelled with the contract's axis names."""
    rows = []
    tensors = [("input", net.get_input(i)) for i in range(net.num_inputs)]
    tensors += [("output", net.get_output(i)) for i in range(net.num_outputs)]
    names = {t.name for _, t in tensors}
    kv_cache = contract.STATIC if contract.WRITE_INDICES in names else contract.CONCAT
    for mode, t in tensors:
        labels = contract.axis_labels(t.name, kv_cache)
        shape = [int(d) for d in t.shape]
        dims: list[int | str] = [labels[k] if d < 0 and k < len(labels) else d for k, d in enumerate(shape)]
        rows.append({"name": t.name, "mode": mode, "dtype": t.dtype.name, "shape": shape, "dims": dims})
    return rows


def _mark_attention_decomposable(trt: ModuleType, net: Any) -> int:
    """Allow each ONNX ``Attention`` to be decomposed (fp32 has no fused kernel); returns how many layers."""
    kinds = tuple(
        getattr(trt.LayerType, k) for k in ("ATTENTION_INPUT", "ATTENTION_OUTPUT") if hasattr(trt.LayerType, k)
    )
    boundary = getattr(trt, "IAttentionBoundaryLayer", None)
    if not kinds or boundary is None:  # a TensorRT without the attention layer lowers ONNX Attention itself
        return 0
    marked = 0
    for i in range(net.num_layers):
        layer = net.get_layer(i)
        if layer.type in kinds:
            layer.__class__ = boundary  # the parser hands out ILayer; the attribute lives on the subclass
            if layer.attention is not None and not layer.attention.decomposable:
                layer.attention.decomposable = True
                marked += 1
    return marked


def _add_profiles(builder: Any, config: Any, profiles: list[Profile]) -> None:
    for i, prof in enumerate(profiles):
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.items():
            p.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(p) != i:
            raise ArtifactError(f"TensorRT rejected optimization profile {i}: {prof}")


def _timing_cache(config: Any, timing_cache: Path | None, logger: Any) -> tuple[Any, bool]:
    """Create the builder's timing cache, seeded from ``timing_cache`` (e.g. the dense build's) if given.

    Returns the cache and whether the seed was accepted. A seed from another GPU or TensorRT version is
    rejected and the build starts afresh (slower, not wrong). TensorRT-RTX accepts the calls but ignores
    them and logs that it did: the seed then counts as not accepted.
    """
    seed = b""
    if timing_cache is not None:
        if not Path(timing_cache).is_file():
            raise UserInputError(f"timing cache {timing_cache} not found (the dense build writes {CACHE})")
        seed = Path(timing_cache).read_bytes()
    seen = len(logger.messages)
    with warnings.catch_warnings():  # TensorRT-RTX: deprecated no-ops, same API
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.create_timing_cache(seed)
        accepted = bool(seed) and bool(config.set_timing_cache(cache, ignore_mismatch=False))
        if seed and not accepted:
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
    complaints = [m for _, m in logger.messages[seen:] if "timing cache" in m.lower()]
    return cache, accepted and not complaints


def _peak_rss_mib() -> float | None:
    """The process's peak resident memory (the build dominates it in the CLI; cheap, Unix only)."""
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def _gpu() -> dict[str, Any] | None:
    """The GPU the plan was tuned for (None on a CPU-only build); torch is a core dependency."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def build_engine(
    onnx_dir: Path,
    out_dir: Path,
    cfg: BuildConfig,
    *,
    backend: str = "auto",
    timing_cache: Path | None = None,
    force: bool = False,
) -> EngineManifest:
    """Build ``onnx_dir/model.onnx`` into ``out_dir`` (``model.plan``, ``timing.cache``, ``engine.json``).

    ``timing_cache``: a ``timing.cache`` to start from; pass the dense build's to the pruned build, which
    has the same layer shapes and so skips most kernel timing. ``out_dir`` appears only when the build
    succeeded; an existing one is replaced only with ``force``. Run on the GPU that will serve the plan
    (``tensorrt``); with ``tensorrt_rtx`` the build runs on a CPU but the plan runs on RTX GPUs only.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    onnx_path = onnx_dir / "model.onnx"
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} not found: point at a directory written by `sleb-deploy onnx`")
    rcfg = cfg.resolved()
    check_writable_target(out_dir, force)  # before minutes of building
    export = _export_summary(onnx_dir)  # a malformed export.json fails before TensorRT is loaded
    name, trt = load_backend(backend)
    logger = recording_logger(trt)
    logger.messages.clear()

    builder, net, _parser = _parse(trt, logger, onnx_path)
    num_layers, kv_heads, head_dim = graph_dims(net, onnx_path)
    if export is not None and export.graph.num_layers != num_layers:
        raise ArtifactError(
            f"{onnx_dir}/export.json says {export.graph.num_layers} layers but model.onnx has {num_layers}"
        )
    cache_len = static_cache_len(net)
    profiles = optimization_profiles(rcfg, num_layers, kv_heads, head_dim, cache_len)

    config = builder.create_builder_config()
    _add_profiles(builder, config, profiles)
    if rcfg.builder_optimization_level is not None:
        config.builder_optimization_level = rcfg.builder_optimization_level
    if rcfg.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, rcfg.workspace_mib * 1024**2)
    decomposed = _mark_attention_decomposable(trt, net) if rcfg.decomposable_attention else 0
    cache, reused = _timing_cache(config, timing_cache, logger) if rcfg.use_timing_cache else (None, False)
    io = _io_table(net)

    started = time.perf_counter()
    plan = builder.build_serialized_network(net, config)
    seconds = round(time.perf_counter() - started, 3)
    if plan is None or plan.nbytes == 0:
        errors = [m for s, m in logger.messages if s in ("ERROR", "INTERNAL_ERROR")]
        raise ArtifactError(f"{name} failed to build {onnx_path}: {errors[-1] if errors else 'no message'}")

    with staged_dir(out_dir, force) as tmp:
        (tmp / PLAN).write_bytes(memoryview(plan))
        if cache is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                (tmp / CACHE).write_bytes(memoryview(cache.serialize()))
        manifest = EngineManifest(
            backend={"module": name, "version": str(trt.__version__)},
            gpu=_gpu(),
            plan=PLAN,
            plan_bytes=int(plan.nbytes),
            timing_cache={
                "file": CACHE if cache is not None else None,
                "seeded_from": str(Path(timing_cache).absolute()) if timing_cache is not None else None,
                "seed_accepted": reused,
                "honoured_by_backend": name != "tensorrt_rtx",  # TensorRT-RTX: timing cache calls are no-ops
            },
            build_options={
                **rcfg.to_json(),
                "strongly_typed": True,
                "attention_layers_marked_decomposable": decomposed,
                "kv_cache": contract.CONCAT if cache_len is None else contract.STATIC,
                "max_cache_len": cache_len,
            },
            precision="from the ONNX (strongly typed network)",
            num_layers=num_layers,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            int64_inputs=[r["name"] for r in io if r["mode"] == "input" and r["dtype"] == "INT64"],
            profiles=profiles_to_json(profiles),
            io=io,
            source={"onnx": str(onnx_path.absolute()), "export": None if export is None else export.to_json()},
            build_seconds=seconds,
            peak_rss_mib=_peak_rss_mib(),
            builder_warnings=[m for s, m in logger.messages if s == "WARNING"][:50],
            environment=environment(),
        )
        manifest.write(tmp)  # last: its presence means the directory is complete
    manifest.directory = out_dir.absolute()
    return manifest
