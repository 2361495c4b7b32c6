"""Lower bounds for our graph's latency: the same graph with the "glue" cut out (benchmark helper, not a test).

What any graph honouring the I/O contract must do per forward on the same weights: the weight GEMMs and the
`present = concat(past, new)` copies, and (for the `core` bound) attention itself. Everything else, the
norms, rotary, activation, gating and residual adds, is glue that a better graph could in principle make
cheaper. `strip_glue` rewrites each glue node of our exported graph into an `Identity` of its first
input (ONNX Runtime then removes it), so the result keeps exactly the GEMMs, layouts, KV concats and
attention nodes of the real graph. Its outputs are numerically meaningless; only its time is.

The layout ops (Reshape/Transpose/Split into the cache's head layout) stay, so these bound graphs laid out
like ours; they cost a few percent of a prefill by ONNX Runtime's profile. If a bound's latency is already
above a target ratio, no such graph with these weights, this dtype and this runtime can meet that target.
"""

from __future__ import annotations

from typing import Any

GLUE_OPS = ("RMSNormalization", "LayerNormalization", "RotaryEmbedding", "Sigmoid")
BOUNDS = ("bound_core", "bound_gemm")


def strip_glue(proto: Any, keep_attention: bool) -> Any:
    """A copy of ``proto`` with glue nodes (and, unless ``keep_attention``, ``Attention``) made identities.

    Residual adds are the ``Add`` nodes fed by a weight GEMM; gating/activation products are the ``Mul``
    nodes fed by a ``Sigmoid`` or a ``Split`` (SwiGLU). Position/mask arithmetic on int64 is untouched.
    Nodes whose outputs nobody reads afterwards (the rotary cos/sin prelude) are removed.
    """
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}

    def fed_by(node: Any, ops: tuple[str, ...]) -> str | None:
        for name in node.input:
            src = producer.get(name)
            if src is not None and src.op_type in ops:
                return str(name)
        return None

    new_nodes = []
    for node in graph.node:
        src: str | None = None
        if node.op_type in GLUE_OPS:
            src = node.input[0]
        elif node.op_type == "Add":
            src = fed_by(node, ("MatMul",))
        elif node.op_type == "Mul" and fed_by(node, ("Sigmoid", "Split")):
            src = node.input[0]
        elif node.op_type == "Attention" and not keep_attention:
            src = node.input[0]  # Q: the output has its shape
        if src is None:
            new_nodes.append(node)
        else:
            new_nodes.append(helper.make_node("Identity", [src], [node.output[0]], name=f"{node.name}_bound"))
    # Dead-node elimination from the graph outputs back.
    producer = {out: node for node in new_nodes for out in node.output}
    live: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(i for i in node.input if i)
    kept = [n for n in new_nodes if id(n) in live]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    return model


__all__ = ["BOUNDS", "GLUE_OPS", "strip_glue"]
