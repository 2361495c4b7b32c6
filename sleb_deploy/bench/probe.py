"""The 1-block probe: the dense model cut to its first block, timed beside dense and pruned for the ideal line.

For the ONNX backends it is exported once, with the dense export's own options (dtype, graph variant,
last-logits, KV-cache contract), into ``export/<name>/probe-1block/`` with a ``probe.json`` that records what
it was made from; a later bench reuses it while the dense export and its options are unchanged. It is a
timing instrument, not a model: its tokens are not meaningful and it is not validated against PyTorch. For the
torch backends the probe is made in memory from the dense checkpoint (``Variant.keep``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sleb_deploy.artifacts import staged_dir, write_json
from sleb_deploy.bench.workspace import PROBE, Variant, Workspace
from sleb_deploy.contract import CONCAT

PROBE_DIR = "probe-1block"
PROBE_FILE = "probe.json"
KEEP = [0]  # the first block: for uniform stacks any block costs the same; see ideal.py for mixed ones


def _key(ws: Workspace) -> dict[str, Any]:
    source = ws.model_source
    options = {k: ws.export_options.get(k) for k in ("dtype", "variant", "last_logits_only")}
    if ws.graph.kv_cache != CONCAT:  # only then: a concatenating probe from before keeps its key
        options.update(kv_cache=ws.graph.kv_cache, max_cache_len=ws.graph.max_cache_len)
    return {"source": {"spec": source.spec, "checksum": source.checksum}, "options": options, "keep": KEEP}


def probe_variant(ws: Workspace, onnx: bool, notify: Callable[[str], None] = lambda message: None) -> Variant:
    """The probe of ``ws``; with ``onnx``, its ONNX export is made (or reused) first."""
    return Variant(PROBE, len(KEEP), _onnx_probe(ws, notify) if onnx else None, ws.dense.hf_dir, keep=KEEP)


def _onnx_probe(ws: Workspace, notify: Callable[[str], None]) -> Path | None:
    target = ws.root / PROBE_DIR
    key = _key(ws)
    recorded = target / PROBE_FILE
    if recorded.is_file() and json.loads(recorded.read_text()) == key and (target / "model.onnx").is_file():
        return target
    if ws.dense.hf_dir is None:
        return None  # a hub model with no local checkpoint: no probe, the ideal is reported as unknown
    from sleb_deploy.export.onnx_graph import DEFAULT_VARIANT, export_decoder_onnx
    from sleb_deploy.models.adapters import remove_blocks
    from sleb_deploy.models.load import load_model, resolve_model

    notify(f"exporting the 1-block probe (ideal line) -> {target}")
    model = load_model(resolve_model(str(ws.dense.hf_dir)), dtype="fp32")
    remove_blocks(model, KEEP)
    with staged_dir(target, force=True) as tmp:
        export_decoder_onnx(
            model,
            tmp,
            dtype=str(key["options"]["dtype"] or "fp32"),
            variant=str(key["options"]["variant"] or DEFAULT_VARIANT),
            last_logits_only=bool(key["options"]["last_logits_only"]),
            kv_cache=str(key["options"].get("kv_cache", CONCAT)),
            max_cache_len=key["options"].get("max_cache_len"),
        )
        write_json(tmp / PROBE_FILE, key)
    return target
