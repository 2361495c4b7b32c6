"""``sleb.json``: what the prune stage did, written beside the pruned checkpoint; the stage's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sleb_deploy.manifest import Manifest


@dataclass
class SourceModel:
    """The dense model the blocks were removed from (``--model`` as resolved; an alias stays an alias)."""

    spec: str
    kind: str  # "local" | "zoo" | "hub"
    location: str
    checksum: str | None
    model_type: str
    num_blocks: int

    @property
    def reference(self) -> str:
        """How to name this model to a later stage: the alias or hub id as given, else the directory."""
        return self.location if self.kind == "local" else self.spec


@dataclass(kw_only=True)
class SlebManifest(Manifest):
    SCHEMA: ClassVar[str] = "sleb-deploy/sleb@1"
    FILE: ClassVar[str] = "sleb.json"

    model: SourceModel
    method: dict[str, Any]  # metric, its label, scorer, barriers, dtype, batch size
    calibration: dict[str, Any] | None  # the windows' WindowSpec (None for a user-given block list)
    removal_order: list[int]  # original block indices, in the order they were removed
    kept_blocks: list[int]
    num_blocks_after: int
    phases: list[dict[str, Any]]
    perplexity: dict[str, Any]  # {"eval": WindowSpec, "dense": Perplexity, "pruned": Perplexity}
    cost: dict[str, Any]  # block_forwards, seconds, resumed_phases
    config: dict[str, Any]  # the PruneConfig as given (what a rerun must match to reuse this checkpoint)
    memory_plan: dict[str, Any] | None = None  # prune/plan.py's MemoryPlan of a SLEB search (None otherwise)
    environment: dict[str, Any] = field(default_factory=dict)
