"""Checks that must run in a process of their own: the bench creates ONNX Runtime's process-wide thread pool,
after which every session in that process must use it, so a test process that went on to other tests'
default sessions would break. `test_bench_run.py` runs this file once: `python bench_child.py WORKSPACE OUT TEXT`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def tokens(workspace: Path) -> dict[str, bool]:
    """Both timed loops generate what Hugging Face's generate does (greedy, no padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sleb_deploy.bench.ort_runner import OrtRunner
    from sleb_deploy.bench.torch_runner import TorchRunner

    ids = np.random.default_rng(0).integers(4, 300, size=(2, 7))
    model = AutoModelForCausalLM.from_pretrained(workspace / "hf-pruned").eval()
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(2, 7, dtype=torch.long),
                             max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)  # fmt: skip
    out = {}
    for runner in (OrtRunner("pruned", workspace / "pruned", "cpu", 0),
                   TorchRunner("pruned", workspace / "hf-pruned", "cpu", "fp32")):  # fmt: skip
        runner.reserve(2, 7 + 5)  # a static-cache export makes its buffers here
        runner.prefill(ids)
        for _ in range(4):
            runner.decode()
        out[type(runner).__name__] = bool(np.array_equal(runner.generated(), ref[:, 7:].numpy()))
        runner.close()
    return out


def interrupt(workspace: Path, out: Path, text: str) -> dict[str, object]:
    """Ctrl-C after the first cell: the report is written, marked partial, with that cell in it."""
    from sleb_deploy.bench.records import BenchConfig, BenchManifest
    from sleb_deploy.bench.stage import run_bench

    def hook(done: int, total: int, what: str) -> None:
        if done == 1:
            raise KeyboardInterrupt

    cfg = BenchConfig(workspace=workspace, out=out, backends="ort-cpu", batch_sizes=(1, 2), prompt_len=8,
                      new_tokens=3, long_prompt_len=0, min_reps=1, max_reps=1, text=text, ideal=False,
                      harness_check=False)  # fmt: skip
    returned = run_bench(cfg, on_progress=hook)
    written = BenchManifest.read(out)
    return {
        "returned_partial": returned.partial,
        "written_partial": written.partial,
        "batches": sorted({r.batch for r in written.records}),
        "md_says_partial": "Partial" in (out / "bench.md").read_text(),
    }


if __name__ == "__main__":
    workspace, out, text = sys.argv[1:]
    print(json.dumps({"tokens": tokens(Path(workspace)), "interrupt": interrupt(Path(workspace), Path(out), text)}))
