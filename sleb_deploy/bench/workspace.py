"""What the benchmark reads from a workspace written by ``sleb-deploy export``, and the prompts it feeds.

Layout (``pipeline.py``): ``export/<name>/{hf-pruned, dense, pruned}``, and the engines (when built) in
``engines/<name>/{dense, pruned}`` beside ``export/``. The ONNX directories carry
``export.json`` (graph, source model, export options); the pruned checkpoint carries ``sleb.json`` (removed
blocks, perplexity of dense and pruned). Everything the benchmark needs about the models comes from these
manifests: no flag repeats what an upstream stage already recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sleb_deploy.errors import ArtifactError, UserInputError

if TYPE_CHECKING:
    from sleb_deploy.export.manifest import ExportManifest
    from sleb_deploy.prune.manifest import SlebManifest

DENSE, PRUNED, PROBE = "dense", "pruned", "probe"
VARIANTS = (DENSE, PRUNED)


@dataclass
class Variant:
    """One model to time: its ONNX directory (if exported) and its Hugging Face checkpoint."""

    name: str  # dense | pruned | probe
    blocks: int
    onnx_dir: Path | None
    hf_dir: Path | None  # None: the torch backend cannot run it (a hub model, or a checkpoint that moved)
    keep: list[int] | None = None  # probe: blocks of the dense checkpoint to keep (made in memory for torch)
    engine_dir: Path | None = None  # its TensorRT engine (model.plan + engine.json), when one was built


@dataclass
class Workspace:
    root: Path
    name: str
    dense: Variant
    pruned: Variant
    graph: Any  # contract.GraphSpec of the dense export (dtype, last_logits_only, ...)
    export_options: dict[str, Any]
    model_source: Any  # models.load.ModelSource of the dense model
    max_context: int | None  # the model's max_position_embeddings
    sleb: SlebManifest | None

    @property
    def variants(self) -> list[Variant]:
        return [self.dense, self.pruned]


def _hf_dir(manifest: ExportManifest) -> Path | None:
    """The checkpoint an export was made from, when it is a directory that still exists (aliases resolve)."""
    from sleb_deploy.models.load import resolve_model

    source = manifest.model
    if source.kind == "hub":
        return None
    if source.kind == "zoo":
        return Path(resolve_model(source.spec).location)
    path = Path(source.location)
    return path if (path / "config.json").is_file() else None


def _engine_dir(engines_root: Path, variant: str) -> Path | None:
    from sleb_deploy.engines.build import EngineManifest

    candidate = engines_root / variant
    return candidate.absolute() if EngineManifest.exists(candidate) else None


def read_workspace(root: Path, engines: Path | None = None) -> Workspace:
    """The dense and pruned exports of ``root`` (``export/<name>``), the pruned checkpoint's ``sleb.json`` and
    the engines in ``engines`` (default: ``engines/<name>`` beside ``export/``, where the pipeline builds them)."""
    import json

    from sleb_deploy.export.manifest import ExportManifest
    from sleb_deploy.prune.manifest import SlebManifest

    root = Path(root)
    if not (ExportManifest.exists(root / DENSE) and ExportManifest.exists(root / PRUNED)):
        raise ArtifactError(
            f"no exported workspace at {root} (need {root / DENSE}/export.json and {root / PRUNED}/export.json): "
            "run `sleb-deploy export` first, or pass --workspace export/<name>"
        )
    dense_m = ExportManifest.read(root / DENSE)
    pruned_m = ExportManifest.read(root / PRUNED)
    hf_pruned = _hf_dir(pruned_m)
    sleb = None
    for candidate in (hf_pruned, root / "hf-pruned"):
        if candidate is not None and SlebManifest.exists(candidate):
            sleb = SlebManifest.read(candidate)
            break
    config_path = root / DENSE / "config.json"
    max_context = None
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        max_context = config.get("max_position_embeddings")
    engines_root = Path(engines) if engines is not None else root.absolute().parent.parent / "engines" / root.name
    return Workspace(
        root=root.absolute(),
        name=root.name,
        dense=Variant(
            DENSE, dense_m.graph.num_layers, root / DENSE, _hf_dir(dense_m), None, _engine_dir(engines_root, DENSE)
        ),
        pruned=Variant(
            PRUNED, pruned_m.graph.num_layers, root / PRUNED, hf_pruned, None, _engine_dir(engines_root, PRUNED)
        ),
        graph=dense_m.graph,
        export_options=dict(dense_m.options),
        model_source=dense_m.model,
        max_context=int(max_context) if max_context else None,
        sleb=sleb,
    )


def quality(sleb: SlebManifest | None) -> dict[str, Any]:
    """Perplexity of dense and pruned as the prune stage measured it, with how it was measured."""
    if sleb is None:
        return {"note": "no sleb.json beside the pruned checkpoint: perplexity unknown"}
    ppl = sleb.perplexity
    return {
        "method": sleb.method.get("metric"),
        "label": sleb.method.get("label"),
        "removal_order": sleb.removal_order,
        "blocks": [sleb.model.num_blocks, sleb.num_blocks_after],
        "eval": ppl.get("eval"),
        "dense_ppl": ppl.get("dense", {}).get("ppl"),
        "pruned_ppl": ppl.get("pruned", {}).get("ppl"),
    }


def prompt_tokens(tokenizer: Any, source: str, rows: int, length: int) -> np.ndarray:
    """``rows`` x ``length`` token ids: consecutive windows of real text, cut to the exact length (no padding).

    The text is tokenized in growing prefixes (about 6 characters a token to start with) so a long corpus is
    not tokenized whole for a few thousand tokens.
    """
    from sleb_deploy.data import load_text, tokenize

    need = rows * length
    text = load_text(source, "eval")
    chars = need * 6
    while True:
        ids = tokenize(tokenizer, text[:chars])
        if len(ids) >= need or chars >= len(text):
            break
        chars *= 2
    if len(ids) < need:
        raise UserInputError(
            f"text source {source} has {len(ids)} tokens, fewer than the {rows} x {length} the sweep needs; "
            "give a longer --text or lower the batch sizes / prompt lengths"
        )
    return np.asarray(ids[:need], dtype=np.int64).reshape(rows, length)
