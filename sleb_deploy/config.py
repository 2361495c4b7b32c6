"""The stages' options: choice vocabularies (enums the CLI shows in ``--help``) and the config dataclasses.

Light on purpose (no torch): the CLI reads its defaults from these dataclasses when it is imported, so
``sleb-deploy --help`` stays fast and a default is written once. Stage code compares plain strings; the
enums' values are the strings (``Metric("sleb").value == "sleb"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sleb_deploy.data import DEFAULT_CALIB, DEFAULT_EVAL
from sleb_deploy.models.zoo import DEFAULT_MODEL

DEFAULT_RATIO = 0.2  # of the blocks, when neither --remove, --ratio nor --blocks is given


class Metric(str, Enum):
    """How blocks are chosen: SLEB, or a labelled baseline."""

    SLEB = "sleb"
    BLOCK_INFLUENCE = "block-influence"  # ShortGPT


class Scorer(str, Enum):
    AUTO = "auto"  # from the memory plan (prune/plan.py): cached when it fits, else streamed
    STREAMED = "streamed"  # blocks read from the checkpoint one at a time, once per phase: the same numbers
    CACHED = "cached"  # each block's input kept per phase: the same numbers, about half the block forwards
    NAIVE = "naive"  # the whole model per candidate, as the official code


class LoadDtype(str, Enum):
    AUTO = "auto"  # the checkpoint's
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class GraphDtype(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Variant(str, Enum):
    OPSET23 = "opset23"  # ONNX Attention / RotaryEmbedding / RMSNormalization ops
    OPSET18 = "opset18"  # MatMul/Softmax attention


class KvCache(str, Enum):
    """The graph's KV-cache contract (``contract.KV_CACHE_CONTRACTS``; engines/README.md)."""

    CONCAT = "concat"  # Optimum's: present = concat(past, new)
    STATIC = "static"  # preallocated buffers updated in place (TensorScatter), opset 24


class StaticAttention(str, Enum):
    """The static graph's attention formulation (``contract.STATIC_ATTENTION_FORMS``; engines/README.md 5c)."""

    OP = "op"  # the ONNX Attention op (the default with a fixed --max-cache-len: TensorRT)
    MATMUL = "matmul"  # MatMul / Softmax / MatMul (the default with a symbolic length: ONNX Runtime CPU)


class WindowBos(str, Enum):
    """How calibration and evaluation windows start (``data.resolve_window_bos``; the family table's
    ``Adapter.window_bos`` decides ``auto``)."""

    AUTO = "auto"  # per family, from the family table
    ALWAYS = "always"  # the tokenizer's BOS at the start of every window
    NEVER = "never"  # one token stream cut into windows (the official SLEB code)


class EngineBackend(str, Enum):
    """Which TensorRT builds engines, one vocabulary for ``export`` and ``build``."""

    AUTO = "auto"  # tensorrt if importable, else tensorrt_rtx if importable, else none
    NONE = "none"  # build no engine
    TENSORRT = "tensorrt"  # NVIDIA GPUs (extra [trt], Dockerfile.trt)
    TENSORRT_RTX = "tensorrt_rtx"  # TensorRT for RTX: builds on CPU-only machines, plans run on RTX GPUs


METRICS = tuple(m.value for m in Metric)
SCORERS = tuple(s.value for s in Scorer)
VARIANTS = tuple(v.value for v in Variant)
BACKEND_EXTRAS = {EngineBackend.TENSORRT.value: "trt", EngineBackend.TENSORRT_RTX.value: "trt-rtx"}


@dataclass
class PruneConfig:
    """Everything `sleb-deploy prune` takes; the CLI's defaults are these."""

    model: str = DEFAULT_MODEL
    out: Path | None = None  # default: export/<model name>/hf-pruned
    calib: str = DEFAULT_CALIB
    windows: int = 8
    seq_len: int = 256
    seed: int = 0
    remove: int | None = None
    ratio: float | None = None  # DEFAULT_RATIO when neither remove nor ratio nor blocks is given
    metric: str = Metric.SLEB.value
    blocks: list[int] | None = None
    scorer: str = Scorer.AUTO.value
    max_memory: str | None = None  # budget for the SLEB search, e.g. "8GiB" (default: the free memory)
    early_barrier: int = 1
    latter_barrier: int = 1
    eval_text: str = DEFAULT_EVAL
    eval_windows: int = 16
    batch_size: int = 1
    window_bos: str = WindowBos.AUTO.value  # how calibration and evaluation windows start
    dtype: str = LoadDtype.AUTO.value
    device: str = "cpu"
    resume: bool = False
    force: bool = False


@dataclass
class ExportConfig:
    """Everything `sleb-deploy onnx` takes; the CLI's defaults are these."""

    dtype: str = GraphDtype.FP32.value
    variant: str = Variant.OPSET23.value
    last_logits_only: bool = False
    external_data: bool | None = None  # None: only when the graph's weights exceed protobuf's 2 GiB
    tolerance: float | None = None  # None: the dtype's tolerance (export/stage.py TOLERANCE)
    force: bool = False
    kv_cache: str = KvCache.CONCAT.value
    max_cache_len: int | None = None  # static contract: fixed buffer length (TensorRT); None = symbolic
    static_attention: str | None = None  # static contract: "op" | "matmul"; None = by max_cache_len
    validate: bool = True  # compare with PyTorch before writing (False: export.json says "skipped")
