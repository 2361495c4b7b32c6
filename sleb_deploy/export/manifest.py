"""``export.json``: what an ONNX directory holds and how it was checked; the export stage's result.

Its own module so that readers (the engine builder, the benchmark, hosts' tooling) need not import the
exporter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sleb_deploy.contract import GraphSpec
from sleb_deploy.manifest import Manifest
from sleb_deploy.models.load import ModelSource


@dataclass(kw_only=True)
class ExportManifest(Manifest):
    """``export.json``: what the ONNX directory holds and how it was checked; the export stage's result."""

    SCHEMA: ClassVar[str] = "sleb-deploy/export@1"
    FILE: ClassVar[str] = "export.json"

    model: ModelSource  # what --model resolved to (a built-in alias stays an alias)
    graph: GraphSpec
    validation: dict[str, Any]
    pruning: dict[str, Any]  # {"pruned": False} or a summary of the checkpoint's sleb.json
    options: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
