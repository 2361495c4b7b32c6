"""The attention block alone: our static graph's two attention forms vs onnxruntime-genai's GroupQueryAttention
(not a test).

    python bench/attention_block_bench.py [--export-dir /work/venvs/sb2]     # ~2 min on 2 cores

Why: ``bench/static_cache_bench.py`` puts the whole static graph 1.5-4% above the builder's at decode B=1 and B=4,
past 128. This script isolates the one part of a decoder layer where the two graphs differ in kind: what runs
between the q|k|v projection and the output projection. Ours (standard ONNX, opset 24): ``Reshape``,
``Transpose``, ``Split``, two ``RotaryEmbedding`` (the query's tables carry the attention scale), two
``TensorScatter`` into the static buffers, then either the ``Attention`` op (``op``, what a fixed
``--max-cache-len`` exports) or MatMul/Softmax/MatMul over a broadcast query (``matmul``, the symbolic-length
default), then ``Transpose`` and ``Reshape`` back. The builder's: one contrib ``GroupQueryAttention`` node
(rotary, cache write and attention, shared buffer), which the issue rules out for our graphs; it is timed here
as the reference. ``op_without_attention`` is the ``op`` form with its ``Attention`` node replaced by an
identity: what everything else in our block costs.

1. Builds a chain of ``--layers`` blocks ``x -> MatMul(q|k|v) -> middle -> MatMul(o) -> Add(x)`` at the default
   model's shapes (SmolLM2-135M: hidden 576, 9 query heads, 3 KV heads, head size 64), random weights, one
   static K/V buffer pair per block bound as input and output (in place), every form with the same buffer
   length (``past + 1``: tight, as ``OrtGenerator`` sizes it at the last step).
   ``lone_nodes``: the standard ``Attention`` node and ``GroupQueryAttention`` alone at batch 1, 1 and 2 threads,
   over buffer lengths around 135 slots, where ONNX Runtime's cost model starts to split the ``Attention`` op's
   head loop over the second thread (below it, 2 threads time as 1).
2. Checks before timing: (a) with ``--export-dir`` (``static_cache_bench.py --work``), the op types between the
   q|k|v and output projections of layer 1 of the exported ``static-op`` and ``static-matmul`` graphs equal the
   hand-built middles' (so this stays a model of the real graph); (b) the three forms' outputs and written
   caches agree on the same weights, positions and cache contents (batch 2, past 5).
3. Times the forms interleaved in ONE process on ONE shared intra-op pool (``--threads``), fresh sessions per
   replica loaded in a rotated order, order rotated per round; medians and per-round ratios over ``gqa``.
4. Writes bench/results/attention_block{_TAG}.{json,md}. ``--shapes 1x120,1x128,1x134,1x136,1x150 --tag threshold``:
   the chain at batch 1 across that length.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HIDDEN, HEADS, KV_HEADS, HEAD = 576, 9, 3, 64
GROUP = HEADS // KV_HEADS
SCALE = HEAD**-0.5
FORMS = ("gqa", "op", "matmul", "op_without_attention")
SHAPES = [(1, 128), (4, 128), (16, 128), (1, 2048), (4, 2048)]  # (batch, past), decode
LONE_SLOTS = [120, 128, 129, 134, 135, 136, 150, 300]


def _middle(form: str, i: int) -> list[Any]:
    """One block's nodes from the q|k|v projection ``qkv{i}`` to the output projection's input ``att{i}``."""
    from onnx import helper as h

    if form == "gqa":
        ins = [f"qkv{i}", "", "", f"pk{i}", f"pv{i}", "seqlens_k", "total_len", "cos_cache", "sin_cache"]
        return [
            h.make_node(
                "GroupQueryAttention",
                ins,
                [f"att{i}", f"k{i}", f"v{i}"],
                domain="com.microsoft",
                num_heads=HEADS,
                kv_num_heads=KV_HEADS,
                scale=SCALE,
                do_rotary=1,
            )
        ]
    nodes = [
        h.make_node("Reshape", [f"qkv{i}", "heads_shape"], [f"r{i}"]),
        h.make_node("Transpose", [f"r{i}"], [f"t{i}"], perm=[0, 2, 1, 3]),
        h.make_node("Split", [f"t{i}", "qkv_split"], [f"q{i}", f"kn{i}", f"vn{i}"], axis=1),
        h.make_node("RotaryEmbedding", [f"q{i}", "q_cos", "q_sin"], [f"qr{i}"]),
        h.make_node("RotaryEmbedding", [f"kn{i}", "cos", "sin"], [f"kr{i}"]),
        h.make_node("TensorScatter", [f"pk{i}", f"kr{i}", "write_indices"], [f"k{i}"]),
        h.make_node("TensorScatter", [f"pv{i}", f"vn{i}", "write_indices"], [f"v{i}"]),
    ]
    if form == "matmul":
        return [
            *nodes,
            h.make_node("Reshape", [f"qr{i}", "group_shape"], [f"qg{i}"]),
            h.make_node("Unsqueeze", [f"k{i}", "axis2"], [f"ku{i}"]),
            h.make_node("Transpose", [f"ku{i}"], [f"kt{i}"], perm=[0, 1, 2, 4, 3]),
            h.make_node("MatMul", [f"qg{i}", f"kt{i}"], [f"s{i}"]),
            h.make_node("Add", [f"s{i}", "float_mask"], [f"sm{i}"]),
            h.make_node("Softmax", [f"sm{i}"], [f"p{i}"], axis=-1),
            h.make_node("Unsqueeze", [f"v{i}", "axis2"], [f"vu{i}"]),
            h.make_node("MatMul", [f"p{i}", f"vu{i}"], [f"o5{i}"]),
            h.make_node("Transpose", [f"o5{i}"], [f"ot{i}"], perm=[0, 3, 1, 2, 4]),
            h.make_node("Reshape", [f"ot{i}", "hidden_shape"], [f"att{i}"]),
        ]
    if form == "op":
        attn = h.make_node(
            "Attention",
            [f"qr{i}", f"k{i}", f"v{i}", "bool_mask", "", "", "nonpad"],
            [f"a{i}"],
            q_num_heads=HEADS,
            kv_num_heads=KV_HEADS,
            scale=1.0,
        )
    else:  # op_without_attention: the K/V writes still happen, nothing reads them
        attn = h.make_node("Identity", [f"qr{i}"], [f"a{i}"])
    return [
        *nodes,
        attn,
        h.make_node("Transpose", [f"a{i}"], [f"at{i}"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", [f"at{i}", "hidden_shape"], [f"att{i}"]),
    ]


def rope_cache(positions: int) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (100000.0 ** (np.arange(0, HEAD, 2, dtype=np.float64) / HEAD))
    ang = np.arange(positions, dtype=np.float64)[:, None] * inv[None]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def build(form: str, layers: int, max_positions: int) -> Any:
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper

    rng = np.random.default_rng(0)  # the same weights in every form
    F = TP.FLOAT
    inits = [
        numpy_helper.from_array(np.array(v, dtype=np.int64), n)
        for n, v in (
            ("heads_shape", [0, 0, HEADS + 2 * KV_HEADS, HEAD]),
            ("qkv_split", [HEADS, KV_HEADS, KV_HEADS]),
            ("hidden_shape", [0, 0, HIDDEN]),
            ("group_shape", [0, KV_HEADS, GROUP, -1, HEAD]),
            ("axis2", [2]),
        )
    ]
    inputs = [h.make_tensor_value_info("x", F, ["B", "S", HIDDEN])]
    if form == "gqa":
        cos, sin = rope_cache(max_positions)
        inits += [numpy_helper.from_array(cos, "cos_cache"), numpy_helper.from_array(sin, "sin_cache")]
        inputs += [
            h.make_tensor_value_info("seqlens_k", TP.INT32, ["B"]),
            h.make_tensor_value_info("total_len", TP.INT32, []),
        ]
    else:
        inputs += [h.make_tensor_value_info(n, F, ["B", "S", HEAD // 2]) for n in ("cos", "sin", "q_cos", "q_sin")]
        inputs.append(h.make_tensor_value_info("write_indices", TP.INT64, ["B"]))
        if form == "op":
            inputs += [
                h.make_tensor_value_info("bool_mask", TP.BOOL, ["B", 1, "S", "T"]),
                h.make_tensor_value_info("nonpad", TP.INT64, ["B"]),
            ]
        if form == "matmul":
            inputs.append(h.make_tensor_value_info("float_mask", F, ["B", 1, 1, "S", "T"]))
    nodes: list[Any] = []
    outputs = []
    x = "x"
    for i in range(layers):
        cache = ["B", KV_HEADS, "T", HEAD]
        inputs += [h.make_tensor_value_info(f"pk{i}", F, cache), h.make_tensor_value_info(f"pv{i}", F, cache)]
        outputs += [h.make_tensor_value_info(f"k{i}", F, cache), h.make_tensor_value_info(f"v{i}", F, cache)]
        w_qkv = rng.standard_normal((HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD), dtype=np.float32) * 0.04
        w_o = rng.standard_normal((HIDDEN, HIDDEN), dtype=np.float32) * 0.04
        inits += [numpy_helper.from_array(w_qkv, f"w_qkv{i}"), numpy_helper.from_array(w_o, f"w_o{i}")]
        nodes.append(h.make_node("MatMul", [x, f"w_qkv{i}"], [f"qkv{i}"]))
        nodes += _middle(form, i)
        nodes += [h.make_node("MatMul", [f"att{i}", f"w_o{i}"], [f"o{i}"]), h.make_node("Add", [x, f"o{i}"], [f"x{i}"])]
        x = f"x{i}"
    outputs.insert(0, h.make_tensor_value_info(x, F, ["B", "S", HIDDEN]))
    graph = h.make_graph(nodes, form, inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 24), h.make_opsetid("com.microsoft", 1)])


def exported_middle(path: Path, layer: int = 1) -> Counter[str]:
    """Op types on every path from layer ``layer``'s q|k|v projection to its output projection in an exported
    graph: the nodes reachable from the projection's output that the output projection's input depends on."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in g.initializer}
    mm = [n for n in g.node if n.name.startswith(f"l{layer}/") and n.op_type == "MatMul" and n.input[1] in weights]
    start, end = mm[0].output[0], mm[1].input[0]  # q|k|v projection, output projection (graph order)
    fwd: set[int] = set()
    frontier = {start}
    while frontier:
        nxt = [k for k, n in enumerate(g.node) if k not in fwd and set(n.input) & frontier]
        fwd.update(nxt)
        frontier = {o for k in nxt for o in g.node[k].output}
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    back: set[int] = set()
    todo = [end]
    while todo:
        k = producer.get(todo.pop())
        if k is not None and k not in back:
            back.add(k)
            todo += list(g.node[k].input)
    return Counter(g.node[k].op_type for k in fwd & back)


def check_structure(graphs: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``graphs``: form (``op``, ``matmul``) -> an exported static graph of that form. Their layer 1's middle
    must have the op types of this bench's middle for the form."""
    out = {}
    for form, path in graphs.items():
        real = exported_middle(path)
        ours = Counter(n.op_type for n in _middle(form, 0))
        if real != ours:
            raise SystemExit(
                f"error: layer 1 of {path} has {dict(real)} between its projections, this bench's "
                f"'{form}' middle {dict(ours)}: update _middle() to the exported graph"
            )
        out[form] = dict(real)
    return out


@functools.cache
def _model_bytes(form: str, layers: int, max_positions: int) -> tuple[bytes, int]:
    """The serialized chain and its node count, built once per form (every replica loads it afresh)."""
    model = build(form, layers, max_positions)
    return model.SerializeToString(), len(model.graph.node)


class Chain:
    """One form's session and the I/O binding of one shape."""

    def __init__(self, form: str, layers: int, so: Any, max_positions: int) -> None:
        import onnxruntime as ort

        self.ort, self.form, self.layers = ort, form, layers
        model, self.nodes = _model_bytes(form, layers, max_positions)
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def bind(self, batch: int, past: int, x: np.ndarray, caches: list[np.ndarray]) -> tuple[Any, list[Any]]:
        """Decode one token at ``past`` for every row; ``caches``: 2 x layers arrays [B, KV, past + 1, D]
        (copied: the graphs write into them)."""
        ort = self.ort
        total = past + 1
        cos, sin = rope_cache(total)
        feeds: dict[str, np.ndarray] = {"x": x}
        if self.form == "gqa":
            feeds |= {"seqlens_k": np.full(batch, past, np.int32), "total_len": np.array(total, np.int32)}
        else:

            def at(table: np.ndarray) -> np.ndarray:  # the rotary tables at position ``past``, every row
                return np.broadcast_to(table[past][None, None], (batch, 1, HEAD // 2)).copy()

            feeds |= {"cos": at(cos), "sin": at(sin), "q_cos": at(cos * SCALE), "q_sin": at(sin * SCALE)}
            feeds |= {"write_indices": np.full(batch, past, np.int64)}
            feeds |= {"bool_mask": np.ones((batch, 1, 1, total), bool), "nonpad": np.full(batch, total, np.int64)}
            feeds |= {"float_mask": np.zeros((batch, 1, 1, 1, total), np.float32)}
        names = {i.name for i in self.session.get_inputs()}
        b = self.session.io_binding()
        for k, v in feeds.items():
            if k in names:
                b.bind_cpu_input(k, v)
        b.bind_output(self.session.get_outputs()[0].name, "cpu")
        keep = []
        for i in range(self.layers):
            for j, (past_name, present_name) in enumerate(((f"pk{i}", f"k{i}"), (f"pv{i}", f"v{i}"))):
                v = ort.OrtValue.ortvalue_from_numpy(caches[2 * i + j].copy())
                keep.append(v)
                b.bind_ortvalue_input(past_name, v)
                b.bind_ortvalue_output(present_name, v)
        return b, keep

    def run(self, binding: Any) -> float:
        start = time.perf_counter()
        self.session.run_with_iobinding(binding)
        return time.perf_counter() - start


def random_state(batch: int, past: int, layers: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, HIDDEN), dtype=np.float32)
    caches = []
    for _ in range(2 * layers):
        c = np.zeros((batch, KV_HEADS, past + 1, HEAD), np.float32)
        c[:, :, :past] = rng.standard_normal((batch, KV_HEADS, past, HEAD), dtype=np.float32)
        caches.append(c)
    return x, caches


def check_agreement(chains: dict[str, Chain]) -> dict[str, float]:
    """Batch 2, past 5: every form's output and written caches against ``gqa``'s, as max |diff| over the
    tensor's max |value| (the residual stream grows through the random layers; fp32 summation order differs)."""
    x, caches = random_state(2, 5, chains["gqa"].layers, seed=7)
    outs = {}
    for form in ("gqa", "op", "matmul"):
        b, keep = chains[form].bind(2, 5, x, caches)
        chains[form].session.run_with_iobinding(b)
        # copies: numpy() views the OrtValue's memory, which goes with ``keep``
        outs[form] = [b.get_outputs()[0].numpy().copy(), *(k.numpy().copy() for k in keep)]
    diffs = {}
    for form in ("op", "matmul"):
        diffs[form] = max(
            float(np.abs(a - r).max() / np.abs(r).max()) for a, r in zip(outs[form], outs["gqa"], strict=True)
        )
        if diffs[form] > 1e-3:
            raise SystemExit(f"error: the '{form}' chain differs from gqa's by {diffs[form]:.3g}: the forms disagree")
    return diffs


def lone_nodes(lengths: list[int], threads: int, runs: int = 2000) -> list[dict[str, Any]]:
    """One node alone at batch 1, one query row, a buffer of T slots: the standard ``Attention`` op (our ``op``
    form's, attention only) and ``GroupQueryAttention`` (rotary, cache write in place and attention), run
    interleaved on this process's global pool of ``threads`` (one process per thread count: sessions with pools
    of their own would spin extra workers on the same cores), median us."""
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper

    kv = ["B", KV_HEADS, "T", HEAD]
    f32 = TP.FLOAT
    attention = h.make_graph(
        [h.make_node("Attention", ["q", "k", "v"], ["y"], scale=1.0)],
        "attention",
        [h.make_tensor_value_info("q", f32, ["B", HEADS, 1, HEAD])]
        + [h.make_tensor_value_info(n, f32, kv) for n in ("k", "v")],
        [h.make_tensor_value_info("y", f32, None)],
    )
    cos, sin = rope_cache(max(lengths) + 1)
    gqa = h.make_graph(
        [
            h.make_node(
                "GroupQueryAttention",
                ["qkv", "", "", "pk", "pv", "seqlens_k", "total_len", "cos_cache", "sin_cache"],
                ["y", "k", "v"],
                domain="com.microsoft",
                num_heads=HEADS,
                kv_num_heads=KV_HEADS,
                scale=SCALE,
                do_rotary=1,
            )
        ],
        "gqa",
        [h.make_tensor_value_info("qkv", f32, ["B", 1, (HEADS + 2 * KV_HEADS) * HEAD])]
        + [h.make_tensor_value_info(n, f32, kv) for n in ("pk", "pv")]
        + [h.make_tensor_value_info("seqlens_k", TP.INT32, ["B"]), h.make_tensor_value_info("total_len", TP.INT32, [])],
        [h.make_tensor_value_info(n, f32, None) for n in ("y", "k", "v")],
        [numpy_helper.from_array(cos, "cos_cache"), numpy_helper.from_array(sin, "sin_cache")],
    )
    opsets = [h.make_opsetid("", 24), h.make_opsetid("com.microsoft", 1)]
    from sleb_deploy.bench.ort_runner import session_options

    so = session_options(threads)
    sessions = {}
    for name, graph in (("attention", attention), ("gqa", gqa)):
        model = h.make_model(graph, opset_imports=opsets).SerializeToString()
        sessions[f"{name}_{threads}"] = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = []
    for t in lengths:
        q = rng.standard_normal((1, HEADS, 1, HEAD), dtype=np.float32)
        k, v = (rng.standard_normal((1, KV_HEADS, t, HEAD), dtype=np.float32) for _ in range(2))
        qkv = rng.standard_normal((1, 1, (HEADS + 2 * KV_HEADS) * HEAD), dtype=np.float32)
        calls = {}
        buffers = []  # the bound OrtValues' memory lives as long as they do
        for key, sess in sessions.items():
            b = sess.io_binding()
            b.bind_output("y", "cpu")
            if key.startswith("attention"):
                for n, a in (("q", q), ("k", k), ("v", v)):
                    b.bind_cpu_input(n, a)
            else:  # the shared buffer, as the builder's runtime binds it
                b.bind_cpu_input("qkv", qkv)
                b.bind_cpu_input("seqlens_k", np.array([t - 1], np.int32))
                b.bind_cpu_input("total_len", np.array(t, np.int32))
                for past, present, a in (("pk", "k", k), ("pv", "v", v)):
                    buf = ort.OrtValue.ortvalue_from_numpy(a.copy())
                    buffers.append(buf)
                    b.bind_ortvalue_input(past, buf)
                    b.bind_ortvalue_output(present, buf)
            calls[key] = (sess, b)
        times: dict[str, list[float]] = {key: [] for key in calls}
        keys = list(calls)
        for r in range(runs + 200):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                sess, b = calls[key]
                start = time.perf_counter()
                sess.run_with_iobinding(b)
                if r >= 200:
                    times[key].append(time.perf_counter() - start)
        rows.append({"slots": t, **{f"{key}_us": round(float(np.median(v)) * 1e6, 1) for key, v in times.items()}})
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export-dir", type=Path, help="static_cache_bench.py --work: check the middles against it")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20, help="rounds per replica and shape")
    ap.add_argument("--replicas", type=int, default=0, help="fresh sessions in a rotated order (0: two per form)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shapes", default="", help="BxPAST,... decode shapes (default: the static bench's five)")
    ap.add_argument("--tag", default="", help="results file suffix: attention_block_TAG.{json,md}")
    ap.add_argument("--lone", type=int, default=0, help=argparse.SUPPRESS)  # a child running lone_nodes
    args = ap.parse_args()
    if args.lone:  # one global pool per process, hence one child per thread count
        print(json.dumps(lone_nodes(LONE_SLOTS, args.lone)))
        return
    try:
        shapes = [tuple(int(v) for v in s.split("x", 1)) for s in args.shapes.split(",")] if args.shapes else SHAPES
        if any(len(t) != 2 or min(t) < 1 for t in shapes):
            raise ValueError
    except ValueError:
        ap.error(f"--shapes {args.shapes!r}: give BATCHxPAST pairs, e.g. 1x128,4x2048")

    import onnxruntime as ort

    from sleb_deploy.bench.ort_runner import session_options

    structure = None
    if args.export_dir:
        sub = {"op": "static-op", "matmul": "static-matmul"}  # static_cache_bench.py's directories
        graphs = {f: args.export_dir / d / "model.onnx" for f, d in sub.items()}
        if missing := [str(g) for g in graphs.values() if not g.is_file()]:
            ap.error(f"--export-dir: no {', '.join(missing)}; run static_cache_bench.py --work {args.export_dir} first")
        structure = check_structure(graphs)
    lone: list[dict[str, Any]] = [{} for _ in LONE_SLOTS]
    for threads in (1, 2):
        child = [sys.executable, __file__, "--lone", str(threads)]
        rows = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
        for merged, row in zip(lone, rows, strict=True):
            merged |= row
    so = session_options(args.threads)
    max_positions = max(p for _, p in shapes) + 1
    forms = list(FORMS)
    args.replicas = args.replicas or 2 * len(forms)
    times: dict[tuple[int, int], dict[str, list[float]]] = {s: {f: [] for f in forms} for s in shapes}
    load_before = [round(v, 2) for v in os.getloadavg()]
    states = {(b, p): random_state(b, p, args.layers, seed=1) for b, p in shapes}  # the same inputs every replica
    for rep in range(args.replicas):
        order = forms[rep % len(forms) :] + forms[: rep % len(forms)]
        chains = {f: Chain(f, args.layers, so, max_positions) for f in order}
        if rep == 0:
            agreement = check_agreement(chains)
            nodes = {f: c.nodes for f, c in chains.items()}
            print("max relative diff vs gqa:", agreement, flush=True)
        for batch, past in shapes:
            x, caches = states[(batch, past)]
            bound = {f: chains[f].bind(batch, past, x, caches) for f in forms}  # (binding, its buffers)
            binds = {f: b for f, (b, _) in bound.items()}
            for _ in range(args.warmup):
                for f in forms:
                    chains[f].run(binds[f])
            for r in range(args.rounds):
                k = r % len(forms)
                for f in forms[k:] + forms[:k]:
                    times[(batch, past)][f].append(chains[f].run(binds[f]))
            del binds, bound
        del chains
        gc.collect()
        print(f"replica {rep + 1}/{args.replicas} done", flush=True)
    rows = []
    for (batch, past), t in times.items():
        row: dict[str, Any] = {"batch": batch, "past": past, "buffer": past + 1, "rounds": len(t["gqa"])}
        for f in forms:
            row[f] = round(float(np.median(t[f])) * 1e3, 3)
            if f != "gqa":
                row[f"{f}_over_gqa"] = round(float(np.median(np.array(t[f]) / np.array(t["gqa"]))), 3)
        per_layer = (np.array(t["op"]) - np.array(t["op_without_attention"])) / args.layers * 1e6
        row["attention_op_us_per_layer"] = round(float(np.median(per_layer)), 1)
        rows.append(row)
        print(row, flush=True)
    result = {
        "layers": args.layers,
        "threads": args.threads,
        "replicas": args.replicas,
        "rounds": args.rounds,
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "onnxruntime": ort.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "structure_checked_against_export": structure,
        "max_rel_diff_vs_gqa": {k: float(f"{v:.3g}") for k, v in agreement.items()},
        "nodes": nodes,
        "rows": rows,
        "lone_nodes": lone,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "attention_block" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# The attention block alone: our static graph's forms vs GroupQueryAttention (ONNX Runtime CPU)",
        "",
        f"A chain of {r['layers']} blocks `x -> MatMul(q|k|v) -> middle -> MatMul(o) -> Add(x)` at SmolLM2-135M's "
        "shapes (hidden 576, 9 query / 3 KV heads, head size 64), random weights, decode one token, static K/V "
        "buffers of past + 1 slots bound in place. "
        f"onnxruntime {r['onnxruntime']}, {r['threads']} intra-op threads, one shared pool, one process; "
        f"{r['replicas']} replicas (fresh sessions, rotated load order) x {r['rounds']} rounds (order rotated). "
        f"Load before/after: {r['load_before']} / {r['load_after']} on {r['machine']['cpus']} CPUs.",
        f"Command: `{r['command']}`. Nodes: {r['nodes']}. Output and caches vs gqa (max |diff| / max |value|, "
        f"batch 2, past 5): {r['max_rel_diff_vs_gqa']}. Middles checked against the exported graph's layer 1: "
        f"{'yes' if r['structure_checked_against_export'] else 'no (no --export-dir)'}.",
        "",
        "`gqa`: onnxruntime's contrib `GroupQueryAttention` (the builder's node; reference only). `op`: our "
        "fixed-length form (standard `Attention` op). `matmul`: our symbolic-length default (MatMul/Softmax/MatMul). "
        "`op_without_attention`: `op` with the `Attention` node replaced by an identity.",
        "",
        "| decode shape | gqa (ms) | op (ms) | matmul (ms) | op without attention (ms) | op / gqa | matmul / gqa "
        "| op without attention / gqa | the Attention op, us per layer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in r["rows"]:
        lines.append(
            f"| B={w['batch']} past {w['past']} | {w['gqa']:.2f} | {w['op']:.2f} | {w['matmul']:.2f} | "
            f"{w['op_without_attention']:.2f} | {w['op_over_gqa']:.3f} | {w['matmul_over_gqa']:.3f} | "
            f"{w['op_without_attention_over_gqa']:.3f} | {w['attention_op_us_per_layer']:.1f} |"
        )
    lone = r["lone_nodes"]
    lines += [
        "",
        "One node alone (batch 1, 9 query heads over 3 KV heads, one query row, T slots, its inputs in cache), "
        "both nodes interleaved on a global pool of 1 or 2 threads (one child process per thread count), median "
        "of 2000 runs after 200 (us). `Attention`: the standard op, attention only (our block adds rotary and "
        "the two cache writes); `GroupQueryAttention`: rotary, cache write in place and attention. The "
        "2-thread figures move by up to a quarter from run to run (waking the pool's worker), the 1-thread ones "
        "by a few per cent:",
        "",
        "| T (slots) | " + " | ".join(str(w["slots"]) for w in lone) + " |",
        "|---|" + "---|" * len(lone),
    ]
    for key, label in (("attention", "`Attention`"), ("gqa", "`GroupQueryAttention`")):
        for threads in (1, 2):
            cells = " | ".join(f"{w[f'{key}_{threads}_us']:.1f}" for w in lone)
            lines.append(f"| {label}, {threads} thread{'s' if threads > 1 else ''} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
