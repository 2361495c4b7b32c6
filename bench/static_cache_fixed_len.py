"""Static-cache graph of the default model with a symbolic vs a fixed ``max_cache_len`` on ONNX Runtime CPU
(not a test): is a shape-specialised graph faster? Prints medians and the paired ratio.

    python bench/static_cache_fixed_len.py [--work /work/venvs/static-bench-work] [--rounds 30]

Reuses ``static_cache_bench.Graph`` (I/O binding, buffer bound as input and output, one shared pool).
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
from static_cache_bench import Graph

SHAPES = ((1, 128), (16, 128))  # decode batch, past; buffer = past + 1 + 128 = the fixed length below
LENGTH = 257


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "static-cache")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    from sleb_deploy.bench.ort_runner import session_options
    from sleb_deploy.export.onnx_graph import export_decoder_onnx
    from sleb_deploy.models.load import load_model, resolve_model

    fixed = args.work / f"static-fixed-{LENGTH}"
    if not (fixed / "model.onnx").is_file():
        warnings.simplefilter("ignore")
        model = load_model(resolve_model("smollm2-135m"), dtype="fp32")
        export_decoder_onnx(model, fixed, kv_cache="static", max_cache_len=LENGTH)
        del model
    so = session_options(2)
    graphs = [Graph("static", args.work / "static" / "model.onnx", so), Graph("static", fixed / "model.onnx", so)]
    print(f"load {[round(x, 2) for x in os.getloadavg()]}")
    for batch, past in SHAPES:
        binds = [g.bind(batch, 1, past, LENGTH, np.random.default_rng(1)) for g in graphs]
        for g, b in zip(graphs, binds, strict=True):
            g.run(b)
        t: list[list[float]] = [[], []]
        for r in range(args.rounds):
            for k in (0, 1) if r % 2 == 0 else (1, 0):
                t[k].append(graphs[k].run(binds[k]))
        sym, fix = np.median(t[0]) * 1e3, np.median(t[1]) * 1e3
        ratio = float(np.median(np.array(t[1]) / np.array(t[0])))
        print(
            f"decode B={batch} past {past}, {LENGTH} slots: symbolic {sym:.2f} ms, fixed {fix:.2f} ms, "
            f"fixed/symbolic {ratio:.3f}"
        )
    print(f"load {[round(x, 2) for x in os.getloadavg()]}")


if __name__ == "__main__":
    main()
