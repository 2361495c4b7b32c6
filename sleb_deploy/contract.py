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

The static-cache contract (``kv_cache="static"``, ``export --kv-cache static``) keeps those names and changes
three things: the K/V inputs are preallocated buffers ``[batch_size, num_kv_heads, max_cache_len, head_dim]``
that the outputs of the same name pattern alias (``present.{i}.key`` is ``past_key_values.{i}.key`` with this
step's rows written in, by ``TensorScatter``); ``attention_mask`` covers the whole buffer
(``[batch_size, max_cache_len]``, 1 = a buffer slot holding a token to attend once this step is written);
and ``write_indices`` (int64 ``[batch_size]``) says per row where this step's first token is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sleb_deploy.errors import UserInputError

BATCH, SEQ, PAST = "batch_size", "sequence_length", "past_sequence_length"
TOTAL = f"{PAST} + {SEQ}"
INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)
PAST_NAME = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
WRITE_INDICES, MAX_CACHE = "write_indices", "max_cache_len"
CONCAT, STATIC = "concat", "static"
KV_CACHE_CONTRACTS = (CONCAT, STATIC)  # present = concat(past, new) | present = past with this step written in
STATIC_OPSET = 24  # TensorScatter and Attention with nonpad_kv_seqlen
# How a static graph computes attention over its buffers (export/static_cache.py): the ``Attention`` op, or
# MatMul / Softmax / MatMul with the query heads of a KV head broadcast against it (engines/README.md 5c).
ATTENTION_OP, ATTENTION_MATMUL = "op", "matmul"
STATIC_ATTENTION_FORMS = (ATTENTION_OP, ATTENTION_MATMUL)


def static_attention(max_cache_len: int | None) -> str:
    """The static graph's attention formulation for a buffer length: fixed (``--max-cache-len``, what TensorRT
    needs) -> the ``Attention`` op, which TensorRT fuses with its KV-cache update layer; symbolic (ONNX Runtime)
    -> the MatMul form, whose decode-step GEMMs take MLAS's matrix-vector path (ONNX Runtime 1.32's CPU
    ``Attention`` kernel does not; bench/results/static_cache.md)."""
    return ATTENTION_OP if max_cache_len is not None else ATTENTION_MATMUL


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def input_names(num_layers: int, kv_cache: str = CONCAT) -> list[str]:
    """The graph inputs, in order: the three token inputs, ``write_indices`` (static contract), then key/value
    of every layer."""
    extra = [WRITE_INDICES] if kv_cache == STATIC else []
    return [*TOKEN_INPUTS, *extra, *past_names(num_layers)]


def output_names(num_layers: int) -> list[str]:
    return [LOGITS, *present_names(num_layers)]


def dynamic_axes(
    num_layers: int, last_logits_only: bool, kv_cache: str = CONCAT, static_cache_len: bool = False
) -> dict[str, dict[int, str]]:
    """The symbolic dimensions of every input and output (index -> Optimum's axis name). Static contract:
    ``static_cache_len`` fixes ``max_cache_len`` in the graph (TensorRT needs it), else it is symbolic."""
    if kv_cache == STATIC:
        cache_axes = {0: BATCH} if static_cache_len else {0: BATCH, 2: MAX_CACHE}
        static: dict[str, dict[int, str]] = {
            INPUT_IDS: {0: BATCH, 1: SEQ},
            ATTENTION_MASK: {0: BATCH} if static_cache_len else {0: BATCH, 1: MAX_CACHE},
            POSITION_IDS: {0: BATCH, 1: SEQ},
            WRITE_INDICES: {0: BATCH},
            LOGITS: {0: BATCH} if last_logits_only else {0: BATCH, 1: SEQ},
        }
        static.update({n: dict(cache_axes) for n in [*past_names(num_layers), *present_names(num_layers)]})
        return static
    axes: dict[str, dict[int, str]] = {
        INPUT_IDS: {0: BATCH, 1: SEQ},
        ATTENTION_MASK: {0: BATCH, 1: TOTAL},
        POSITION_IDS: {0: BATCH, 1: SEQ},
        LOGITS: {0: BATCH} if last_logits_only else {0: BATCH, 1: SEQ},
    }
    axes.update({n: {0: BATCH, 2: PAST} for n in past_names(num_layers)})
    axes.update({n: {0: BATCH, 2: TOTAL} for n in present_names(num_layers)})
    return axes


def axis_labels(name: str, kv_cache: str = CONCAT) -> list[str]:
    """Every dimension of tensor ``name`` by meaning (static ones too), for I/O tables such as engine.json's."""
    if kv_cache == STATIC and (name == ATTENTION_MASK or PAST_NAME.match(name) or name.startswith("present.")):
        return [BATCH, MAX_CACHE] if name == ATTENTION_MASK else [BATCH, "num_kv_heads", MAX_CACHE, "head_dim"]
    if name == WRITE_INDICES:
        return [BATCH]
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


def fill_token(eos_token_id: int | None, pad_token_id: int | None) -> int:
    """The token a finished row is filled with: pad, else eos, else 0."""
    return pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)


def _greedy_tokens(logits: np.ndarray, done: np.ndarray, fill: int, eos_token_id: int | None) -> np.ndarray:
    """Each row's next token (argmax of ``logits [B, vocab]``; ``fill`` for rows already done); marks the rows
    that produced ``eos_token_id`` in ``done`` (in place)."""
    nxt = np.where(done, fill, logits.argmax(axis=-1).astype(np.int64))
    if eos_token_id is not None:
        done |= nxt == eos_token_id
    return nxt


def greedy_concat_loop(
    step: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> np.ndarray:
    """The concatenating contract's greedy host loop, whatever runs the graph: prompt + new tokens ``[B, P + n]``.

    ``step(ids, mask, pos)`` runs one forward over the new tokens ``ids`` (the whole left-padded prompt first,
    then one token per row), keeps the KV cache itself, and returns the last position's logits ``[B, V]``.
    The mask grows by one column of ones a step and positions continue from the last one; rows that produced
    ``eos_token_id`` are filled with pad (or eos, or 0) and the loop stops when every row has finished.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.int64)
    batch = ids.shape[0]
    fill = fill_token(eos_token_id, pad_token_id)
    pos = position_ids(mask, mask.shape[1])
    cur, out = ids, [ids]
    done = np.zeros(batch, dtype=bool)
    for _ in range(max_new_tokens):
        nxt = _greedy_tokens(step(cur, mask, pos[:, -cur.shape[1] :]), done, fill, eos_token_id)
        out.append(nxt[:, None])
        if done.all():
            break
        cur = nxt[:, None]
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        pos = pos[:, -1:] + 1  # only the last column is read from here on
    return np.concatenate(out, axis=1)


def greedy_static_loop(
    step: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    cache_len: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    last_logits_only: bool = False,
) -> np.ndarray:
    """The static-cache contract's greedy host loop, whatever runs the graph: prompt + new tokens ``[B, P + n]``.

    ``step(ids, mask, pos, write_indices, at)`` runs one forward over the new tokens ``ids`` with a buffer
    mask ``[B, cache_len]``, writing their K/V into its own ``cache_len``-slot buffers in place at
    ``write_indices``, and returns the logits ``[B, V]`` of position ``at[b]`` of each row (0 for a
    last-logits-only graph). Prompts may be padded left or right: row b continues right after its last prompt
    token (its padding slots are overwritten) and its first new token comes from that token's logits. Every
    request the buffers cannot hold is refused (``UserInputError``) before ``step`` is called.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.int64)
    batch, prompt = ids.shape
    if mask.shape != ids.shape:
        raise UserInputError(f"attention_mask {mask.shape} must have the shape of input_ids {ids.shape}")
    if not mask.any(axis=1).all():
        raise UserInputError("every prompt needs at least one token (a row of attention_mask is all zeros)")
    needed = static_slots(prompt, max_new_tokens)
    if cache_len < needed:
        raise UserInputError(
            f"the KV cache buffer has {cache_len} slots, fewer than the {needed} this call writes "
            f"(prompt {prompt} + {max_new_tokens} new tokens - 1): raise max_cache_len or shorten the request"
        )
    last = prompt - 1 - np.argmax(mask[:, ::-1], axis=1)  # each row's last prompt token (prompt - 1: left padding)
    if last_logits_only and (last != prompt - 1).any():
        raise UserInputError("a --last-logits-only graph gives the last position's logits only: pad prompts left")
    fill = fill_token(eos_token_id, pad_token_id)
    buf_mask = np.zeros((batch, cache_len), dtype=np.int64)
    buf_mask[:, :prompt] = mask
    write = np.zeros(batch, dtype=np.int64)
    cur, pos = ids, position_ids(mask, prompt)
    next_pos = mask.sum(axis=1)
    out = [ids]
    done = np.zeros(batch, dtype=bool)
    rows = np.arange(batch)
    zeros = np.zeros(batch, dtype=np.int64)
    for k in range(max_new_tokens):
        at = last - write if k == 0 and not last_logits_only else zeros
        nxt = _greedy_tokens(step(cur, buf_mask, pos, write, at), done, fill, eos_token_id)
        out.append(nxt[:, None])
        if done.all():
            break
        if k == max_new_tokens - 1:
            break
        write = last + 1 if k == 0 else write + 1
        buf_mask[rows, write] = 1
        cur, pos = nxt[:, None], next_pos[:, None]
        next_pos = next_pos + 1
    return np.concatenate(out, axis=1)


def static_slots(prompt_len: int, max_new_tokens: int) -> int:
    """Buffer slots a static-cache generation writes: the prompt and every new token but the last (which is
    returned, never fed back)."""
    return prompt_len + max(max_new_tokens - 1, 0)


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
    kv_cache: str = CONCAT
    max_cache_len: int | None = None  # static contract: the buffer length fixed in the graph; None = symbolic
    attention: str | None = None  # static contract: ATTENTION_OP | ATTENTION_MATMUL (static_attention); else None
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime", "tensorrt"])  # what can run the graph
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
