"""Write a Triton model repository (``tensorrt_plan`` platform) for a built engine, from its engine.json.

Layout: ``<repo>/<name>/config.pbtxt`` + ``<repo>/<name>/1/model.plan``. ``max_batch_size`` is 0 because
the batch dimension is explicit in every tensor (a KV cache cannot be batched by Triton's scheduler).

One instance group lists **every** optimization profile (prefill "0" and decode "1"). Triton's scheduler
hands a request to any instance, and the TensorRT backend then picks the best profile *among the profiles
listed for that instance* (tensorrt_backend ``GetMostOptimizedProfile``; ``instance_group.profile`` is "the
set of optimization profiles available to this instance group"). One group per profile would send decode
requests to prefill-only instances, outside their profile. The KV-cache loop stays with the client or an
ensemble (see engines/README.md). Nothing here needs TensorRT or Triton: it is text from the manifest, and
the tests parse it into Triton's ``ModelConfig`` protobuf.

A static-cache engine (``build_options.kv_cache`` = ``"static"``) is refused: its ``KVCacheUpdate`` layers need
each present bound at its past's address, kept across steps, and Triton's TensorRT backend fills buffers of its
own from each request and returns the outputs in the response (engines/README.md section 6).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from sleb_deploy import contract
from sleb_deploy.artifacts import staged_dir
from sleb_deploy.engines.build import EngineManifest
from sleb_deploy.errors import ArtifactError, UserInputError


def config_pbtxt(manifest: EngineManifest, name: str) -> str:
    """The ``config.pbtxt`` text for the engine described by ``manifest`` (engine.json)."""

    def tensor(row: dict[str, Any]) -> str:
        try:
            triton_type = contract.element_type(trt=row["dtype"]).triton
        except KeyError:
            raise ArtifactError(
                f"engine.json: tensor {row['name']} has dtype {row['dtype']} with no Triton type"
            ) from None
        dims = ", ".join(str(int(d)) for d in row["shape"])
        return f'  {{\n    name: "{row["name"]}"\n    data_type: {triton_type}\n    dims: [ {dims} ]\n  }}'

    io = manifest.io
    if not io:
        raise ArtifactError("engine.json has no I/O table: rebuild the engine with this version of sleb-deploy")
    inputs = ",\n".join(tensor(r) for r in io if r["mode"] == "input")
    outputs = ",\n".join(tensor(r) for r in io if r["mode"] == "output")
    profiles = ", ".join(f'"{p["index"]}"' for p in manifest.profiles)
    names = ", ".join(p["name"] for p in manifest.profiles)
    groups = f"  {{\n    kind: KIND_GPU\n    count: 1\n    profile: [ {profiles} ]  # {names}\n  }}"
    return (
        f'name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: 0\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\ninstance_group [\n{groups}\n]\n"
    )


def write_triton_repository(engine_dir: Path, repo_dir: Path, name: str = "model", force: bool = False) -> Path:
    """Create ``repo_dir/name`` (config + plan, hard-linked when possible); returns that directory."""
    engine_dir = Path(engine_dir)
    manifest = EngineManifest.read(engine_dir)
    if manifest.kv_cache == contract.STATIC:
        raise UserInputError(
            f"{engine_dir} is a static KV-cache engine, which Triton's TensorRT backend cannot serve: its present "
            "outputs must stay at their past inputs' addresses across steps; serve the ONNX export with "
            "`sleb-deploy triton --kind generate` or run the engine in a host (engines/README.md section 5c)"
        )
    plan = engine_dir / manifest.plan
    if not plan.is_file():
        raise ArtifactError(f"{plan} not found: {engine_dir} is not a complete engine directory")
    target = Path(repo_dir) / name
    with staged_dir(target, force) as tmp:
        (tmp / "1").mkdir()
        try:
            os.link(plan, tmp / "1" / "model.plan")  # plans are large; same filesystem is the usual case
        except OSError:
            shutil.copy2(plan, tmp / "1" / "model.plan")
        (tmp / "config.pbtxt").write_text(config_pbtxt(manifest, name))
    return target.absolute()
