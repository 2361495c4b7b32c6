"""Trace one block of each kind, then replicate it in the graph: the export's trace no longer grows with depth.

Why: the dynamo trace (``torch.export``, decompositions, translation) costs about a second per block: 36 s of
a 43 s export of a 24-block Qwen2.5-0.5B shape, 58 s for a 36-block Qwen3-4B shape, against 15 s and 30 s for
the whole of onnxruntime-genai's builder, which writes its graph without tracing (issue 10). The blocks of a
decoder are one structure with different weights, so tracing each of them is wasted work.

How:

1. **Kinds.** A block's kind is what makes its graph differ: its layer type (Gemma's sliding/full), its
   window, and whether it is the last block of a last-logits graph. Every other attribute the export reads is
   the model's, not the block's (``decoder_module._Layer``), and each per-block tensor must have the same
   shape as its representative's (checked; otherwise the whole decoder is traced as before).
2. **Trace a short decoder**: the same ``ExportDecoder`` with only the first block of each kind, in order,
   unoptimized (``optimize=False``).
3. **Replicate.** The exporter records the module scope of every node (``pkg.torch.onnx.name_scopes``):
   ``layers.k`` nodes are block k. Each block of the full decoder is block k's nodes cloned (``onnx_ir``'s
   ``Cloner``) with its own inputs substituted: the previous block's hidden state, its own past (or cache
   buffer) inputs and present outputs, its own initializers (``layers.{j}.<same path>``, the full decoder's
   tensors: real ones, or the streamed export's placeholders). Shared values (masks, rotary tables, shapes,
   the token inputs) stay shared. The boundary is checked, not assumed: a block must take exactly one value
   from the block before (its hidden state; the first block, exactly one value computed from ``input_ids``),
   give exactly one value to the next, and touch no other block's inputs or weights; anything else falls back
   to the full trace.
4. **Optimize once**, the whole graph, with the exporter's own optimizer (``ONNXProgram.optimize``): the same
   constant folding (pre-transposed weights, Gemma's ``1 + w`` norms) and deduplication as the full trace.

The result has the full trace's operators, initializers (names and bytes) and I/O; node and value names of
the cloned blocks differ. Compared with the full trace by ONNX Runtime outputs on llama (last logits),
gemma3 (two kinds), opt and qwen3 (static contract) in ``tests/export/test_replicate.py``; every family's
export tests run through it.
"""

from __future__ import annotations

import ast
import copy
import logging
import re
from functools import reduce
from typing import Any, cast

import torch
from torch import nn

from sleb_deploy import contract
from sleb_deploy.export.decoder_module import ExportDecoder, _Layer

log = logging.getLogger(__name__)
SCOPES = "pkg.torch.onnx.name_scopes"
_LAYER_SCOPE = re.compile(r"layers\.(\d+)$")
_NOT_DATA = {"Shape", "Size"}  # outputs that depend on a tensor's shape only


class NotReplicable(Exception):
    """The short trace's blocks do not have the boundary replication relies on (the full trace is used)."""


def kinds(wrapper: ExportDecoder) -> list[int]:
    """For each block, the index of its kind in order of first appearance."""
    seen: dict[tuple[Any, ...], int] = {}
    out: list[int] = []
    for i, layer_m in enumerate(wrapper.layers):
        layer = cast(_Layer, layer_m)
        key = (layer.layer_type, layer.window, wrapper.last_logits_only and i == wrapper.num_layers - 1)
        out.append(seen.setdefault(key, len(seen)))
    return out


def _tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {
        **dict(layer.named_parameters(remove_duplicate=False)),
        **dict(layer.named_buffers(remove_duplicate=False)),
    }


def short_decoder(wrapper: ExportDecoder) -> tuple[ExportDecoder, list[int], list[int]] | None:
    """``(short decoder, kind of each block, first block of each kind)``, or None when replication would not
    save anything (every block its own kind) or the blocks of a kind differ in their tensors' shapes."""
    kind = kinds(wrapper)
    reps = [kind.index(k) for k in range(max(kind) + 1)]
    if len(reps) == wrapper.num_layers:
        return None
    for j, k in enumerate(kind):
        ref, mine = _tensors(wrapper.layers[reps[k]]), _tensors(wrapper.layers[j])
        if ref.keys() != mine.keys() or any(
            ref[n].shape != mine[n].shape or ref[n].dtype != mine[n].dtype for n in ref
        ):
            return None
    short = copy.copy(wrapper)  # shares the modules; only the block list and its length differ
    short._modules = dict(wrapper._modules)
    short._modules["layers"] = nn.ModuleList([wrapper.layers[r] for r in reps])
    short.num_layers = len(reps)
    return short, kind, reps


def _scope_layer(node: Any) -> int | None:
    """The block whose module scope a node was traced in (None: outside the blocks)."""
    raw = node.metadata_props.get(SCOPES)
    if not raw:
        return None
    scopes = ast.literal_eval(raw)
    if len(scopes) < 2 or scopes[0] != "":
        return None
    m = _LAYER_SCOPE.match(scopes[1])
    return int(m.group(1)) if m else None


class _Block:
    """One block of the short graph: its nodes and the values that cross its boundary."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.nodes: list[Any] = []
        self.hidden_in: Any = None
        self.hidden_out: Any = None
        self.inits: dict[str, Any] = {}  # path inside the block -> initializer value
        self.past: list[Any] = []  # its past/cache inputs (key, value)
        self.present: list[Any] = []  # its present outputs (key, value)


def _data_from(graph: Any, source: Any) -> set[Any]:
    """Values whose data (not only shape) depends on ``source``."""
    reached = {source}
    for node in graph:
        if node.op_type in _NOT_DATA:
            continue
        if any(v is not None and v in reached for v in node.inputs):
            reached.update(node.outputs)
    return reached


def _owners(graph: Any, r: int, n_token_inputs: int, from_ids: set[Any]) -> dict[int, int]:
    """``id(node) -> block`` for the nodes that are a block's own computation.

    A node in a block's scope that reads only shared values (shapes of the inputs, constants, the masks and
    rotary tables, nothing computed from ``input_ids``, no past input, no block weight) is left shared: the
    exporter computes a symbolic size once and reuses it in later blocks, e.g. ``batch * heads``.
    """
    past = set(graph.inputs[n_token_inputs:])
    owner: dict[int, int] = {}
    for node in graph:
        k = _scope_layer(node)
        if k is None:
            continue
        if k >= r:
            raise NotReplicable(f"node {node.name} is in block {k} of {r}")

        def shared(v: Any) -> bool:
            if v is None:
                return True
            if v.is_graph_input():
                return v not in past and v is not graph.inputs[0]
            if v.is_initializer():
                return not (v.name or "").startswith("layers.")
            producer = v.producer()
            return producer is not None and id(producer) not in owner and v not in from_ids

        if not all(shared(v) for v in node.inputs):
            owner[id(node)] = k
    return owner


def _blocks(graph: Any, r: int, n_token_inputs: int) -> list[_Block]:
    """Split the short graph into its ``r`` blocks and check each boundary (raises ``NotReplicable``)."""
    blocks = [_Block(k) for k in range(r)]
    from_ids = _data_from(graph, graph.inputs[0])
    owner = _owners(graph, r, n_token_inputs, from_ids)
    for node in graph:
        if id(node) in owner:
            blocks[owner[id(node)]].nodes.append(node)
    past = list(graph.inputs)[n_token_inputs:]
    outputs = list(graph.outputs)
    for b in blocks:
        b.past = past[2 * b.k : 2 * b.k + 2]
        b.present = outputs[1 + 2 * b.k : 3 + 2 * b.k]
        prefix = f"layers.{b.k}."
        crossing_in: list[Any] = []
        for node in b.nodes:
            for v in node.inputs:
                if v is None or v in crossing_in:
                    continue
                producer = v.producer()
                if producer is not None and owner.get(id(producer)) == b.k:
                    continue
                if v.is_graph_input():
                    if v in past and v not in b.past:
                        raise NotReplicable(f"block {b.k} reads another block's input {v.name}")
                    continue
                if v.is_initializer():
                    name = v.name or ""
                    if name.startswith(prefix):
                        b.inits[name[len(prefix) :]] = v
                    elif name.startswith("layers."):
                        raise NotReplicable(f"block {b.k} reads another block's weight {name}")
                    continue
                if producer is None:
                    continue
                crossing_in.append(v)
        from_block = [v for v in crossing_in if id(v.producer()) in owner]
        from_root_data = [v for v in crossing_in if id(v.producer()) not in owner and v in from_ids]
        if b.k == 0:
            if from_block or len(from_root_data) != 1:
                raise NotReplicable(f"block 0 takes {len(from_block)} block values, {len(from_root_data)} token ones")
            b.hidden_in = from_root_data[0]
        else:
            if from_root_data or len(from_block) != 1 or owner[id(from_block[0].producer())] != b.k - 1:
                raise NotReplicable(f"block {b.k} does not take exactly one value from block {b.k - 1}")
            b.hidden_in = from_block[0]
        crossing_out = {
            v
            for node in b.nodes
            for v in node.outputs
            if any(owner.get(id(use.node)) != b.k for use in v.uses()) and v not in b.present
        }
        if len(crossing_out) != 1:
            raise NotReplicable(f"block {b.k} gives {len(crossing_out)} values to the rest of the graph")
        b.hidden_out = crossing_out.pop()
        if any(v.producer() is None or owner.get(id(v.producer())) != b.k for v in b.present):
            raise NotReplicable(f"block {b.k}'s presents are not its own")
    for b in blocks[:-1]:
        if any(owner.get(id(use.node)) != b.k + 1 for use in b.hidden_out.uses()):
            raise NotReplicable(f"block {b.k}'s hidden state is read outside block {b.k + 1}")
    return blocks


def replicate(model_ir: Any, wrapper: ExportDecoder, kind: list[int], n_token_inputs: int) -> None:
    """Turn the short graph (one block per kind) into the full decoder's graph, in place."""
    import onnx_ir as ir
    from onnx_ir._cloner import Cloner

    graph = model_ir.graph
    r = max(kind) + 1
    blocks = _blocks(graph, r, n_token_inputs)
    n = wrapper.num_layers
    past_names, present_names = contract.past_names(n), contract.present_names(n)
    for v in [*graph.inputs[n_token_inputs:], *graph.outputs[1:]]:
        v.name = f"{v.name}.short"  # free the final names first
    new_past: list[Any] = []
    for j, k in enumerate(kind):
        for t, src in enumerate(blocks[k].past):
            new_past.append(ir.Value(name=past_names[2 * j + t], shape=src.shape.copy(), type=src.type))
    # Root nodes (shapes, runtime asserts) may read a short past input: they read block 0's past instead,
    # which every graph has and which has the same symbolic dims.
    for b in blocks:
        for t, src in enumerate(b.past):
            ir.convenience.replace_all_uses_with(src, new_past[t])
    clones: list[Any] = []
    hidden = blocks[0].hidden_in
    presents: list[Any] = []
    new_inits: list[list[Any]] = []
    for j, k in enumerate(kind):
        b = blocks[k]
        value_map: dict[Any, Any] = {b.hidden_in: hidden}
        for t in range(2):
            value_map[new_past[t]] = new_past[2 * j + t]  # the uses were moved to block 0's past above
        layer = wrapper.layers[j]
        layer_inits: list[Any] = []
        new_inits.append(layer_inits)
        for path, init in b.inits.items():
            tensor = reduce(getattr, path.split("."), layer)
            value = ir.Value(
                name=f"layers.{j}.{path}",
                shape=init.shape.copy(),
                type=init.type,
                const_value=type(init.const_value)(tensor, name=f"layers.{j}.{path}"),
            )
            value_map[init] = value
            layer_inits.append(value)
        cloner = Cloner(attr_map={}, value_map=value_map, metadata_props={}, allow_outer_scope_values=True)
        for node in b.nodes:
            new = cloner.clone_node(node)
            new.name = f"l{j}/{node.name}"
            for out in new.outputs:
                out.name = f"l{j}/{out.name}"
            clones.append(new)
        hidden = value_map[b.hidden_out]
        for t, present in enumerate(b.present):
            value_map[present].name = present_names[2 * j + t]
            presents.append(value_map[present])
    ir.convenience.replace_all_uses_with(blocks[-1].hidden_out, hidden)
    token_inputs = list(graph.inputs[:n_token_inputs])
    logits = graph.outputs[0]
    graph.inputs.clear()
    graph.inputs.extend([*token_inputs, *new_past])
    graph.outputs.clear()
    graph.outputs.extend([logits, *presents])
    graph.remove([node for b in blocks for node in b.nodes], safe=True)
    for b in blocks:
        for v in b.inits.values():
            if not v.uses():
                del graph.initializers[v.name]
    graph.extend(clones)
    for layer_inits in new_inits:
        for v in layer_inits:
            graph.register_initializer(v)
    graph.sort()


__all__ = ["NotReplicable", "kinds", "replicate", "short_decoder"]
