"""The exported graph's contract, in one place: tensor names, axes, element types, the external-data rule and
``GraphSpec`` (what ``export.json`` says about a graph). The exporter, the validator, the ONNX Runtime
generator, the TensorRT builder, the Triton writer and the benchmark all import it; none spells a name,
an axis or a dtype table of its own.

The names and axes are Optimum's (``ORTModelForCausalLM`` loads our graphs as they are):

=============================  =========================================================================
``input_ids``                  int64 ``[batch_size, sequence_length]``
``attention_mask``             int64 ``[batch_size, past_sequence_length + sequence_length]`` (1 = token)
``position_ids``               int64 ``[batch_size, sequence_length]``: ``cumsum(mask) - 1`` clipped at 0
``past_key_values.{i}.key``    float ``[batch_size, num_kv_heads, past_sequence_length, head_dim]`` (+ value)
``logits``                     float ``[batch_size, sequence_length | 1, vocab_size]``
``present.{i}.key``            float ``[batch_size, num_kv_heads, past_sequence_length + sequence_length,
                               head_dim]`` (+ value): the past with the new positions appended
=============================  =========================================================================
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BATCH, SEQ, PAST = "batch_size", "sequence_length", "past_sequence_length"
TOTAL = f"{PAST} + {SEQ}"
INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)
PAST_NAME = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
KV_CACHE_CONTRACTS = ("concat",)  # present = concat(past, new); the static-cache contract will add "static"


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def input_names(num_layers: int) -> list[str]:
    """The graph inputs, in order: the three token inputs, then key/value of every layer."""
    return [*TOKEN_INPUTS, *past_names(num_layers)]


def output_names(num_layers: int) -> list[str]:
    return [LOGITS, *present_names(num_layers)]


def dynamic_axes(num_layers: int, last_logits_only: bool) -> dict[str, dict[int, str]]:
    """The symbolic dimensions of every input and output (index -> Optimum's axis name)."""
    axes: dict[str, dict[int, str]] = {
        INPUT_IDS: {0: BATCH, 1: SEQ},
        ATTENTION_MASK: {0: BATCH, 1: TOTAL},
        POSITION_IDS: {0: BATCH, 1: SEQ},
        LOGITS: {0: BATCH} if last_logits_only else {0: BATCH, 1: SEQ},
    }
    axes.update({n: {0: BATCH, 2: PAST} for n in past_names(num_layers)})
    axes.update({n: {0: BATCH, 2: TOTAL} for n in present_names(num_layers)})
    return axes


def axis_labels(name: str) -> list[str]:
    """Every dimension of tensor ``name`` by meaning (static ones too), for I/O tables such as engine.json's."""
    if name in (INPUT_IDS, POSITION_IDS):
        return [BATCH, SEQ]
    if name == ATTENTION_MASK:
        return [BATCH, TOTAL]
    if name == LOGITS:
        return [BATCH, SEQ, "vocab_size"]
    if PAST_NAME.match(name):
        return [BATCH, "num_kv_heads", PAST, "head_dim"]
    if name.startswith("present."):
        return [BATCH, "num_kv_heads", TOTAL, "head_dim"]
    return []


def position_ids(attention_mask: np.ndarray, seq_len: int) -> np.ndarray:
    """HF generate's rule for the last ``seq_len`` columns: ``cumsum(mask) - 1``, clipped at 0 (left padding)."""
    pos = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)
    out: np.ndarray = pos[:, -seq_len:].astype(np.int64)
    return out


@dataclass(frozen=True)
class ElementType:
    """One element type as each runtime spells it."""

    key: str  # ours: fp32, fp16, bf16, int64, int32, bool
    torch: str  # torch.<name>
    numpy: str | None  # numpy has no bfloat16
    onnx: int  # onnx.TensorProto enum value
    ort: str  # onnxruntime NodeArg.type
    trt: str  # tensorrt.DataType name
    triton: str  # Triton's config data_type
    itemsize: int


ELEMENT_TYPES: tuple[ElementType, ...] = (
    ElementType("fp32", "float32", "float32", 1, "tensor(float)", "FLOAT", "TYPE_FP32", 4),
    ElementType("fp16", "float16", "float16", 10, "tensor(float16)", "HALF", "TYPE_FP16", 2),
    ElementType("bf16", "bfloat16", None, 16, "tensor(bfloat16)", "BF16", "TYPE_BF16", 2),
    ElementType("int64", "int64", "int64", 7, "tensor(int64)", "INT64", "TYPE_INT64", 8),
    ElementType("int32", "int32", "int32", 6, "tensor(int32)", "INT32", "TYPE_INT32", 4),
    ElementType("bool", "bool", "bool", 9, "tensor(bool)", "BOOL", "TYPE_BOOL", 1),
)
GRAPH_DTYPES = ("fp32", "fp16", "bf16")  # the precisions a graph can be exported in


def element_type(**by: Any) -> ElementType:
    """The row whose field matches, e.g. ``element_type(ort="tensor(float)")``; KeyError if none does."""
    ((attr, value),) = by.items()
    for row in ELEMENT_TYPES:
        if getattr(row, attr) == value:
            return row
    raise KeyError(f"no element type with {attr}={value!r}")


# protobuf cannot serialise a message of 2 GiB or more. The margin leaves room for the graph's nodes and the
# small constants the exporter folds in, so the decision is made on the initializers' bytes alone.
PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_MARGIN = 64 * 1024**2


def needs_external_data(initializer_bytes: int) -> bool:
    """Whether a graph whose initializers take ``initializer_bytes`` must keep them in ``model.onnx_data``."""
    return initializer_bytes > PROTOBUF_LIMIT - EXTERNAL_DATA_MARGIN


@dataclass
class GraphSpec:
    """What downstream stages need to drive a graph: ``export.json``'s ``graph`` record."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str
    opset: int
    variant: str
    last_logits_only: bool
    model_type: str
    external_data: bool
    initializer_bytes: int = 0
    kv_cache: str = "concat"
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
