"""Triton model repositories for an exported ONNX directory: ``onnxruntime_onnx`` and the ``generate`` model.

Layout (one model directory each, written through ``staged_dir``; big files hard-linked when possible):

    <repo>/<name>/config.pbtxt            platform onnxruntime_onnx; instance kind CPU or GPU
    <repo>/<name>/1/model.onnx            + its external data files (the names the graph refers to)
    <repo>/<generate_name>/config.pbtxt   backend python; limits and device as parameters
    <repo>/<generate_name>/1/model.py     re-exports sleb_deploy.engines.triton_generate.TritonPythonModel
    <repo>/<generate_name>/1/...          the exported directory: model.onnx (+ data), tokenizer, configs

The ``onnxruntime_onnx`` model is one forward of the graph (prefill or decode step), so its client runs the
KV-cache loop and sends the whole cache every step; ``max_batch_size`` is 0 because every tensor's batch axis
is explicit and a cache at one past length cannot be merged with another (engines/README.md). Its inputs and
outputs come from ``export.json``'s ``GraphSpec`` through ``contract`` (names, axes, element types). No
registry here has Triton's onnxruntime backend, so that config is checked by parsing it into Triton's
``ModelConfig`` and against the graph's own inputs; the ``generate`` model runs in a real server in the tests.

A static-cache graph (``--kv-cache static``) gets the ``generate`` model only. Its contract needs each
``present.{i}.*`` bound to the very buffer passed as ``past_key_values.{i}.*``, kept from one step to the next.
Triton's onnxruntime backend cannot do that: every request's inputs come from the request and every output
goes to a buffer the backend allocates and returns in the response (it binds outputs to its own allocator),
so nothing is aliased across requests and the client would send and receive the whole ``max_cache_len``
buffer every step, the very copy the contract exists to avoid. ``write_onnx_triton_repository`` refuses the
``onnxruntime`` kind for such a graph with one line saying so; the ``generate`` model keeps the buffers in the
server, bound in place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from sleb_deploy import contract
from sleb_deploy.artifacts import check_writable_target, staged_dir
from sleb_deploy.contract import GraphSpec
from sleb_deploy.engines.triton_generate import GENERATE_INPUTS, GENERATE_OUTPUTS, GenerateSettings
from sleb_deploy.errors import ArtifactError, UserInputError

MODEL_PY = '''"""Triton python-backend entry point of a sleb-deploy `generate` model (`sleb-deploy triton` wrote it).

The server's Python needs sleb-deploy (pip install --no-deps), numpy<2, onnxruntime, transformers.
"""

from sleb_deploy.engines.triton_generate import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


class TritonKind(str, Enum):
    """Which models ``sleb-deploy triton`` writes."""

    ONNXRUNTIME = "onnxruntime"  # onnxruntime_onnx: one forward per request, the client keeps the cache
    GENERATE = "generate"  # python backend: the whole greedy loop in the server
    BOTH = "both"


class InstanceKind(str, Enum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class TritonConfig:
    """Options of ``sleb-deploy triton`` (the CLI's defaults come from here)."""

    kind: TritonKind = TritonKind.BOTH
    name: str = "model"  # the onnxruntime_onnx model
    generate_name: str = "generate"
    instance_kind: InstanceKind = InstanceKind.CPU  # both models' instance groups
    instances: int = 1
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    force: bool = False


def _dims(values: Iterable[int]) -> str:
    return ", ".join(str(int(d)) for d in values)


def _tensor(name: str, triton_type: str, dims: Iterable[int], optional: bool = False) -> str:
    extra = "\n    optional: true" if optional else ""
    return f'  {{\n    name: "{name}"\n    data_type: {triton_type}\n    dims: [ {_dims(dims)} ]{extra}\n  }}'


def _group(kind: InstanceKind, count: int) -> str:
    return f"instance_group [\n  {{\n    kind: KIND_{kind.value.upper()}\n    count: {count}\n  }}\n]\n"


def graph_tensors(spec: GraphSpec) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """The graph's inputs and outputs as (name, Triton type, dims with -1 for every symbolic axis)."""
    try:
        float_type = contract.element_type(key=spec.dtype).triton
    except KeyError:
        raise ArtifactError(f"export.json: graph dtype {spec.dtype} has no Triton type") from None
    int64 = contract.element_type(key="int64").triton
    kv = [-1, spec.num_kv_heads, -1, spec.head_dim]
    inputs = [(n, int64, [-1, -1]) for n in contract.TOKEN_INPUTS]
    inputs += [(n, float_type, kv) for n in contract.past_names(spec.num_layers)]
    logits = [-1, 1, spec.vocab_size] if spec.last_logits_only else [-1, -1, spec.vocab_size]
    outputs = [(contract.LOGITS, float_type, logits)]
    outputs += [(n, float_type, kv) for n in contract.present_names(spec.num_layers)]
    return inputs, outputs


def onnxruntime_config_pbtxt(spec: GraphSpec, name: str, kind: InstanceKind, count: int = 1) -> str:
    """``config.pbtxt`` for the exported graph on Triton's onnxruntime backend."""
    inputs, outputs = graph_tensors(spec)
    ins = ",\n".join(_tensor(*t) for t in inputs)
    outs = ",\n".join(_tensor(*t) for t in outputs)
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n{_group(kind, count)}"
    )


def generate_config_pbtxt(name: str, settings: GenerateSettings, kind: InstanceKind, count: int = 1) -> str:
    """``config.pbtxt`` for the python-backend ``generate`` model."""
    ins = ",\n".join(_tensor(n, t, d, opt) for n, t, d, opt in GENERATE_INPUTS)
    outs = ",\n".join(_tensor(n, t, d) for n, t, d in GENERATE_OUTPUTS)
    params = "".join(
        f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
        for k, v in settings.to_parameters().items()
    )
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n{_group(kind, count)}{params}"
    )


def graph_files(onnx_dir: Path, spec: GraphSpec) -> list[str]:
    """``model.onnx`` and the external data files it refers to (read from the graph, not guessed)."""
    names = ["model.onnx"]
    if spec.external_data:
        from sleb_deploy._optional import require

        onnx = require("onnx", "onnx")
        proto = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
        tensors = list(proto.graph.initializer)
        for node in proto.graph.node:
            tensors += [a.t for a in node.attribute if a.HasField("t")]
        locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
        names += sorted(locations)
    missing = [n for n in names if not (onnx_dir / n).is_file()]
    if missing:
        raise ArtifactError(f"{onnx_dir} lacks {', '.join(missing)}: export it again")
    return names


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # graphs are large; the same filesystem is the usual case
    except OSError:
        shutil.copy2(src, dst)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or '"' in name:
        raise UserInputError(f"model name {name!r} is not a plain directory name")


def write_onnx_triton_repository(onnx_dir: Path, repo_dir: Path, cfg: TritonConfig | None = None) -> list[Path]:
    """Write the models ``cfg.kind`` asks for into ``repo_dir``; returns their directories.

    Every target is checked before anything is written: one that exists without ``force`` stops the whole
    call with nothing touched.
    """
    from sleb_deploy.export.manifest import ExportManifest

    cfg = cfg or TritonConfig()
    onnx_dir = Path(onnx_dir)
    manifest = ExportManifest.read(onnx_dir)
    spec = manifest.graph
    kind = TritonKind(cfg.kind)
    if spec.kv_cache == contract.STATIC and kind != TritonKind.GENERATE:
        raise UserInputError(
            f"{onnx_dir} speaks the static KV-cache contract, which Triton's onnxruntime backend cannot serve: "
            "it returns every output in a new buffer, never the input's, so the cache would cross the wire twice "
            "a step; serve it with --kind generate (the cache stays in the server)"
        )
    names = {
        TritonKind.ONNXRUNTIME: [cfg.name],
        TritonKind.GENERATE: [cfg.generate_name],
        TritonKind.BOTH: [cfg.name, cfg.generate_name],
    }[kind]
    for n in names:
        _check_name(n)
    if len(set(names)) != len(names):
        raise UserInputError(f"--name and --generate-name are both {cfg.name!r}: give them different names")
    if cfg.instances < 1:
        raise UserInputError(f"--instances must be at least 1, got {cfg.instances}")
    targets = [Path(repo_dir).absolute() / n for n in names]
    for target in targets:
        check_writable_target(target, cfg.force)
    files = graph_files(onnx_dir, spec)
    written = []
    if kind in (TritonKind.ONNXRUNTIME, TritonKind.BOTH):
        with staged_dir(Path(repo_dir) / cfg.name, cfg.force) as tmp:
            (tmp / "1").mkdir()
            for f in files:
                _link(onnx_dir / f, tmp / "1" / f)
            text = onnxruntime_config_pbtxt(spec, cfg.name, InstanceKind(cfg.instance_kind), cfg.instances)
            (tmp / "config.pbtxt").write_text(text)
        written.append(targets[0])
    if kind in (TritonKind.GENERATE, TritonKind.BOTH):
        with staged_dir(Path(repo_dir) / cfg.generate_name, cfg.force) as tmp:
            version = tmp / "1"
            version.mkdir()
            carried = set(files) | set(manifest.files) | {"export.json"}
            for f in sorted(carried):
                if (onnx_dir / f).is_file():
                    _link(onnx_dir / f, version / f)
            (version / "model.py").write_text(MODEL_PY)
            text = generate_config_pbtxt(
                cfg.generate_name, cfg.generate, InstanceKind(cfg.instance_kind), cfg.instances
            )
            (tmp / "config.pbtxt").write_text(text)
        written.append(targets[-1])
    return written
