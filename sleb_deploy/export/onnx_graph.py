"""Export an in-memory HF decoder to one ONNX graph with Optimum-style KV-cache I/O.

Exporter choice: ``torch.onnx.export(dynamo=True)``. It is the only exporter that emits the opset-23
``Attention``/``RotaryEmbedding``/``RMSNormalization`` ops (via ``torch.onnx.ops``), which measured faster
in ONNX Runtime and build in TensorRT; the TorchScript exporter is deprecated and stops at opset 20.
We export ``decoder_module.ExportDecoder`` (explicit KV concat, explicit masks) rather than the HF
forward, so no transformers ``Cache`` object or mask builder is traced.

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key|value``
and returns ``logits`` and ``present.{i}.key|value``; symbolic dims carry Optimum's names. After export we
check it is portable: no ``If``/``Loop`` nodes, default ONNX domain only (TensorRT parses it).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.contract import GraphSpec
from sleb_deploy.errors import UserInputError
from sleb_deploy.export.decoder_module import VARIANTS, ExportDecoder, empty_past

DEFAULT_VARIANT = VARIANTS[0]
OPSETS = {"opset23": 23, "opset18": 18}
ALL_RUNTIMES = ("onnxruntime", "tensorrt")
STATIC_RUNTIMES = ALL_RUNTIMES  # see engines/README.md: the static variant's TensorRT status

__all__ = ["DEFAULT_VARIANT", "GraphSpec", "check_portable", "export_decoder_onnx", "io_signature"]


def external_data_decision(wrapper: ExportDecoder, external_data: bool | None) -> tuple[bool, int]:
    """``(use external data, initializer bytes)``, from the bytes the graph will really hold.

    ``external_data=None`` decides by size; ``False`` for a graph that cannot be one protobuf is the user's
    mistake, refused before minutes of tracing.
    """
    nbytes = wrapper.initializer_bytes()
    needed = contract.needs_external_data(nbytes)
    if external_data is False and needed:
        raise UserInputError(
            f"the graph's weights take {nbytes / 1024**3:.2f} GiB, over protobuf's 2 GiB limit for one file: "
            "drop --no-external-data (weights then go to model.onnx_data)"
        )
    return (needed if external_data is None else external_data), nbytes


def _rename_dims(proto: Any, axes: dict[str, dict[int, str]]) -> None:
    """Give graph inputs/outputs Optimum's symbolic dim names (dynamo invents s0, s1 + s0, ...)."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for idx, name in axes.get(vi.name, {}).items():
            dim = vi.type.tensor_type.shape.dim[idx]
            dim.ClearField("dim_value")
            dim.dim_param = name
    if contract.LOGITS in axes and 1 not in axes[contract.LOGITS]:
        for vi in proto.graph.output:
            if vi.name == contract.LOGITS:
                vi.type.tensor_type.shape.dim[1].dim_value = 1


def _trim_unused_outputs(proto: Any) -> None:
    """Drop unused trailing outputs of ``Attention`` nodes (TensorRT accepts only single-output ones)."""
    used = {name for node in proto.graph.node for name in node.input}
    used |= {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        if node.op_type != "Attention":
            continue
        outs = list(node.output)
        while len(outs) > 1 and (not outs[-1] or outs[-1] not in used):
            outs.pop()
        del node.output[:]
        node.output.extend(outs)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision registrations, axis renames, deprecations) on stderr:
    our own output says what happened, and validation checks the result."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def check_portable(proto: Any) -> list[str]:
    """Problems that would stop TensorRT: control flow or non-default-domain ops (empty list = fine)."""
    problems = []
    for node in proto.graph.node:
        if node.op_type in ("If", "Loop", "Scan"):
            problems.append(f"control-flow node {node.op_type} ({node.name})")
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"non-default domain op {node.domain}::{node.op_type}")
    for fn in proto.functions:
        problems.append(f"local function {fn.domain}::{fn.name}")
    return problems


def export_decoder_onnx(
    model: Any,
    out_dir: Path,
    *,
    dtype: str = "fp32",
    variant: str = DEFAULT_VARIANT,
    last_logits_only: bool = False,
    external_data: bool | None = None,
    kv_cache: str = contract.CONCAT,
    max_cache_len: int | None = None,
    static_attention: str | None = None,
) -> GraphSpec:
    """Write ``out_dir/model.onnx`` (+ ``model.onnx_data`` if large or asked) and return its spec.

    ``kv_cache="static"``: the static-cache contract (``static_cache``), opset 24; ``max_cache_len`` fixes the
    buffer length in the graph (TensorRT needs it), ``None`` leaves it symbolic (ONNX Runtime).
    ``static_attention``: the static graph's attention formulation (``contract.STATIC_ATTENTION_FORMS``);
    ``None``: ``contract.static_attention(max_cache_len)``.

    ``model`` is cast to ``dtype`` for the export (a half-precision graph exported from a half-precision
    torch model; casting an fp32 ONNX afterwards breaks the rotary path) and cast back afterwards.
    """
    onnx = require("onnx", "onnx")
    tdtype = graph_torch_dtype(dtype, variant)
    static = check_kv_cache(kv_cache, variant, max_cache_len)
    form = _static_form(static, max_cache_len, static_attention)
    out_dir = Path(out_dir)
    orig_dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval().to(tdtype)
    try:
        wrapper = _wrapper(model, variant, last_logits_only, form)
        use_ext, nbytes = external_data_decision(wrapper, external_data)
        out_dir.mkdir(parents=True, exist_ok=True)  # only once the family and the options are known to work
        program, axes = trace_decoder(wrapper, tdtype, kv_cache, max_cache_len)
        proto = program.model_proto
        finish_proto(proto, axes)
        onnx_path = out_dir / "model.onnx"
        data_path = out_dir / "model.onnx_data"
        if data_path.exists():
            data_path.unlink()
        if use_ext:
            onnx.save_model(
                proto,
                str(onnx_path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_path.name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(proto, str(onnx_path))
        spec = graph_spec(wrapper, dtype, use_ext, nbytes, kv_cache, max_cache_len)
        spec.attention = form
        return spec
    finally:
        model.to(orig_dtype)
        model.train(was_training)


def graph_torch_dtype(dtype: str, variant: str) -> torch.dtype:
    """The torch dtype of a graph precision; refuses an unknown dtype or variant (and a missing extra)."""
    require("onnx", "onnx")
    require("onnxscript", "onnx")  # the dynamo exporter's backend
    if dtype not in contract.GRAPH_DTYPES:
        raise UserInputError(f"unknown dtype {dtype!r} (choose from {', '.join(contract.GRAPH_DTYPES)})")
    if variant not in OPSETS:
        raise UserInputError(f"unknown graph variant {variant!r} (choose from {', '.join(OPSETS)})")
    tdtype: torch.dtype = getattr(torch, contract.element_type(key=dtype).torch)
    return tdtype


def check_kv_cache(kv_cache: str, variant: str, max_cache_len: int | None) -> bool:
    """Whether the static contract is asked for; refuses combinations that cannot be built."""
    if kv_cache not in contract.KV_CACHE_CONTRACTS:
        choices = ", ".join(contract.KV_CACHE_CONTRACTS)
        raise UserInputError(f"unknown KV cache contract {kv_cache!r} (choose from {choices})")
    if kv_cache == contract.CONCAT:
        if max_cache_len is not None:
            raise UserInputError("--max-cache-len applies to --kv-cache static only")
        return False
    if variant != "opset23":
        raise UserInputError("--kv-cache static needs --variant opset23 (it is built on the ONNX Attention op)")
    if max_cache_len is not None and max_cache_len < 2:
        raise UserInputError(f"--max-cache-len must be at least 2, not {max_cache_len}")
    return True


def _static_form(static: bool, max_cache_len: int | None, static_attention: str | None) -> str | None:
    """The static graph's attention formulation (None for the concatenating contract)."""
    if not static:
        if static_attention is not None:
            raise UserInputError("--static-attention applies to --kv-cache static only")
        return None
    if static_attention is None:
        return contract.static_attention(max_cache_len)
    if static_attention not in contract.STATIC_ATTENTION_FORMS:
        choices = ", ".join(contract.STATIC_ATTENTION_FORMS)
        raise UserInputError(f"unknown static attention {static_attention!r} (choose from {choices})")
    return static_attention


def _wrapper(model: Any, variant: str, last_logits_only: bool, static_attention: str | None) -> ExportDecoder:
    if static_attention is not None:
        from sleb_deploy.export.static_cache import StaticExportDecoder

        return StaticExportDecoder(
            model, variant=variant, last_logits_only=last_logits_only, attention=static_attention
        ).eval()
    return ExportDecoder(model, variant=variant, last_logits_only=last_logits_only).eval()


def _example_inputs(
    wrapper: ExportDecoder, tdtype: torch.dtype, axes: dict[str, dict[int, str]]
) -> tuple[list[torch.Tensor], tuple[Any, ...]]:
    """Example inputs and dynamic shapes of the concatenating contract."""
    batch, seq, past_len = 2, 3, 5
    example: list[torch.Tensor] = [
        torch.ones(batch, seq, dtype=torch.long),
        torch.ones(batch, past_len + seq, dtype=torch.long),
        torch.arange(past_len, past_len + seq).repeat(batch, 1),
        *empty_past(wrapper, batch, tdtype, past_len),
    ]
    dynamic_shapes = (
        *(axes[n] for n in contract.TOKEN_INPUTS),
        tuple(axes[n] for n in contract.past_names(wrapper.num_layers)),
    )
    return example, dynamic_shapes


def trace_decoder(
    wrapper: ExportDecoder,
    tdtype: torch.dtype,
    kv_cache: str = contract.CONCAT,
    max_cache_len: int | None = None,
    *,
    replicate: bool = True,
) -> tuple[Any, dict[str, dict[int, str]]]:
    """``(ONNXProgram, axes)``: the dynamo export of ``wrapper`` (optimized; its initializers still reference
    the wrapper's tensors, nothing is serialized yet). ``replicate``: trace one block of each kind and
    replicate it (``export/replicate.py``; the full trace where that does not apply)."""
    axes = contract.dynamic_axes(wrapper.num_layers, wrapper.last_logits_only, kv_cache, max_cache_len is not None)
    program = _trace_replicated(wrapper, tdtype, kv_cache, max_cache_len) if replicate else None
    if program is None:
        program = _trace(wrapper, tdtype, kv_cache, max_cache_len, optimize=True)
    return program, axes


def _trace_replicated(
    wrapper: ExportDecoder, tdtype: torch.dtype, kv_cache: str, max_cache_len: int | None
) -> Any | None:
    from sleb_deploy.export import replicate

    found = replicate.short_decoder(wrapper)
    if found is None:
        return None
    short, kind, _ = found
    program = _trace(short, tdtype, kv_cache, max_cache_len, optimize=False)
    n_token_inputs = len(contract.input_names(0, kv_cache))
    try:
        replicate.replicate(program.model, wrapper, kind, n_token_inputs)
    except replicate.NotReplicable as e:
        logging.getLogger(__name__).info("tracing every block: %s", e)
        return None
    program.optimize()
    return program


def _trace(
    wrapper: ExportDecoder, tdtype: torch.dtype, kv_cache: str, max_cache_len: int | None, optimize: bool
) -> Any:
    static = kv_cache == contract.STATIC
    ins = contract.input_names(wrapper.num_layers, kv_cache)
    outs = contract.output_names(wrapper.num_layers)
    axes = contract.dynamic_axes(wrapper.num_layers, wrapper.last_logits_only, kv_cache, max_cache_len is not None)
    if static:
        from sleb_deploy.export.static_cache import example_inputs

        example, dynamic_shapes = example_inputs(wrapper, tdtype, axes, max_cache_len)
    else:
        example, dynamic_shapes = _example_inputs(wrapper, tdtype, axes)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            tuple(example),
            dynamo=True,
            opset_version=contract.STATIC_OPSET if static else OPSETS[wrapper.variant],
            input_names=ins,
            output_names=outs,
            dynamic_shapes=dynamic_shapes,
            optimize=optimize,
            verbose=False,
        )
    assert program is not None
    return program


def finish_proto(proto: Any, axes: dict[str, dict[int, str]]) -> None:
    """Optimum's dim names, single-output Attention nodes, and the portability check (raises if not portable)."""
    _rename_dims(proto, axes)
    _trim_unused_outputs(proto)
    problems = check_portable(proto)
    if problems:
        raise RuntimeError(f"exported graph is not portable: {problems[0]} (+{len(problems) - 1} more)")


def graph_spec(
    wrapper: ExportDecoder,
    dtype: str,
    external_data: bool,
    nbytes: int,
    kv_cache: str = contract.CONCAT,
    max_cache_len: int | None = None,
) -> GraphSpec:
    cfg = wrapper.cfg
    static = kv_cache == contract.STATIC
    return GraphSpec(
        num_layers=wrapper.num_layers,
        num_kv_heads=wrapper.n_kv,
        head_dim=wrapper.head_dim,
        vocab_size=int(cfg.vocab_size),
        dtype=dtype,
        opset=contract.STATIC_OPSET if static else OPSETS[wrapper.variant],
        variant=wrapper.variant,
        last_logits_only=wrapper.last_logits_only,
        model_type=str(cfg.model_type),
        external_data=bool(external_data),
        initializer_bytes=nbytes,
        kv_cache=kv_cache,
        max_cache_len=max_cache_len,
        runtimes=list(STATIC_RUNTIMES if static else ALL_RUNTIMES),
        input_names=contract.input_names(wrapper.num_layers, kv_cache),
        output_names=contract.output_names(wrapper.num_layers),
    )


def io_signature(onnx_path: Path) -> dict[str, Any]:
    """Names, element types and dims (symbolic names or ints) of the graph I/O, for golden files."""
    onnx = require("onnx", "onnx")
    proto = onnx.load(str(onnx_path), load_external_data=False)

    def rows(vis: Any) -> list[dict[str, Any]]:
        out = []
        for vi in vis:
            tt = vi.type.tensor_type
            dims: list[str | int] = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
            out.append({"name": vi.name, "elem_type": _elem_name(tt.elem_type), "dims": dims})
        return out

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"opset": int(opset), "inputs": rows(proto.graph.input), "outputs": rows(proto.graph.output)}


def _elem_name(onnx_type: int) -> str:
    try:
        return contract.element_type(onnx=onnx_type).torch  # float32, float16, bfloat16, int64, ...
    except KeyError:
        return str(onnx_type)
