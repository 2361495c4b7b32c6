"""Memory-bounded export: the graph traced from a weightless model, the weights written tensor by tensor.

Why: ``onnx_graph.export_decoder_onnx`` exports a model held in memory. With the fused/transposed copies the
exporter makes, the serialized protobuf and ``onnx.save``'s own copy, that peaked at 3.5x the checkpoint (a
Qwen2.5-0.5B shape in fp32: 6.96 GB); a 7B fp16 model would need ~47 GB. Here the process holds at most one
copy of the graph's weights, and only while ONNX Runtime validates it.

How (same graph, nodes and initializer bytes, as the in-memory export of the same checkpoint; tested):

1. **Trace without weights** (one block of each kind, then replicated: ``export/replicate.py``).
   The HF model is built from its config with accelerate's ``init_empty_weights``
   (parameters on the meta device, buffers such as rotary frequencies real) and cast to the graph dtype, then
   wrapped in the same ``ExportDecoder``: its fused, pre-transposed buffers are meta too. Before tracing, every
   meta tensor is replaced: a small one (at most the constant folder's input limit, so everything the
   optimizer may fold: norm weights, biases, tiny models entirely) by its real value from the checkpoint; a
   large one by an uninitialised ``torch.empty`` placeholder, whose pages are never touched (no RSS). Tracing
   and ONNX's optimizer read shapes only for those (they fold no input above that limit).
2. **Write tensor by tensor.** Each placeholder-backed initializer becomes an ``onnx_ir.LazyTensor`` whose thunk
   reads its sources from the safetensors files (``safe_open``, one tensor at a time), casts them exactly as
   the in-memory path does (checkpoint dtype -> fp32 -> graph dtype) and applies the exporter's own recipe
   (``ExportDecoder``'s ``derived`` table: the same function that built the fused buffer). ``onnx_ir`` then writes
   them into ``model.onnx_data``, densely in declaration order, with two threads (one reads and transposes a
   tensor while the other writes; at most ``WRITE_IN_FLIGHT_BYTES`` besides the largest tensor in memory), and
   the graph proto is saved without its data. A graph under the
   protobuf limit that is kept in one file is materialised in the proto (then at most ~2x its bytes, < 4 GB).
3. **Validate one copy at a time.** ONNX Runtime holds the graph's weights (external data read once, no
   pre-packed copies, no constant folding of fp16->fp32 casts, no arena); the PyTorch reference is the HF model
   with accelerate's disk offload pointed at the checkpoint's own safetensors: each module's weights are read
   (as fp32, like the in-memory reference) just before it runs and dropped after. Peak: the ORT session plus
   one fp32 module.

Only local safetensors checkpoints whose keys match the model's parameter names stream; anything else (a hub
id, ``.bin`` files) takes the in-memory path (``streamable`` says which). Users with several GPUs who want the
in-memory path on accelerators load with accelerate's device map (``device_map="auto"``); there is no
home-made sharding here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sleb_deploy._optional import require
from sleb_deploy.contract import GraphSpec
from sleb_deploy.export.decoder_module import Derivation, ExportDecoder
from sleb_deploy.export.onnx_graph import (
    external_data_decision,
    finish_proto,
    graph_spec,
    graph_torch_dtype,
    trace_decoder,
)
from sleb_deploy.models.checkpoint import CheckpointTensors, has_safetensors

WRITE_WORKERS = 2  # threads writing model.onnx_data (reading/transposing one tensor while writing another)
WRITE_IN_FLIGHT_BYTES = 256 << 20  # their materialized tensors, besides the largest one


def _fold_limit() -> int:
    """Tensors up to this many elements are loaded for the trace: the optimizer may fold them (its input limit)."""
    from onnxscript.optimizer import _constant_folding

    return int(_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT)


def empty_model(config: Any) -> nn.Module:
    """The HF model of ``config`` with its parameters on the meta device and its buffers real, fp32, eval."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # init_empty_weights defeats the tying from_config does (measured: Gemma-3)
    return cast(nn.Module, model.eval())


def checkpoint_keys(model: nn.Module, ckpt: CheckpointTensors) -> dict[int, str] | None:
    """``id(parameter) -> checkpoint key`` (tied parameters: whichever name the checkpoint has), or None when
    some parameter is not in the checkpoint under its name (then the checkpoint does not stream)."""
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    keys: dict[int, str] = {}
    for pid, candidates in names.items():
        found = [n for n in candidates if n in ckpt.file]
        if not found:
            return None
        keys[pid] = found[0]
    return keys


def streamable(directory: Path) -> bool:
    """Whether a checkpoint directory can be exported by ``export_streamed`` (local safetensors, every parameter
    under its own name); the config is read, no weight."""
    directory = Path(directory)
    return directory.is_dir() and has_safetensors(directory) and meta_model(directory) is not None


def meta_model(directory: Path) -> tuple[nn.Module, CheckpointTensors, dict[int, str]] | None:
    """``(empty_model, checkpoint, checkpoint_keys)`` of a safetensors checkpoint directory, or None when some
    parameter is not in the checkpoint under its name (it does not stream)."""
    from transformers import AutoConfig

    model = empty_model(AutoConfig.from_pretrained(directory))
    ckpt = CheckpointTensors(directory)
    keys = checkpoint_keys(model, ckpt)
    return None if keys is None else (model, ckpt, keys)


class _Materializer:
    """Replaces the meta tensors of an ``ExportDecoder`` (and the HF modules it shares) by real small tensors
    and untouched placeholders, remembering how to compute each placeholder's real value."""

    def __init__(self, ckpt: CheckpointTensors, keys: dict[int, str], tdtype: torch.dtype) -> None:
        self.ckpt = ckpt
        self.keys = keys
        self.tdtype = tdtype
        self.limit = _fold_limit()
        self.replaced: dict[int, torch.Tensor] = {}  # id(meta tensor) -> its replacement
        self.thunks: dict[int, Callable[[], torch.Tensor]] = {}  # data_ptr(placeholder) -> real value
        self.recipes: dict[int, Derivation] = {}

    def load(self, meta: torch.Tensor) -> torch.Tensor:
        # The in-memory path loads the checkpoint as fp32, then casts the model to the graph dtype (a round trip
        # through fp32 is exact, so a tensor already in the graph dtype is used as it is).
        tensor = self.ckpt.get(self.keys[id(meta)])
        return tensor if tensor.dtype == self.tdtype else tensor.to(torch.float32).to(self.tdtype)

    def thunk(self, meta: torch.Tensor) -> Callable[[], torch.Tensor]:
        recipe = self.recipes.get(id(meta))
        if recipe is None:
            return lambda: self.load(meta)
        fn, sources = recipe
        return lambda: fn([self.load(s) for s in sources])

    def replacement(self, meta: torch.Tensor) -> torch.Tensor:
        if id(meta) not in self.replaced:
            thunk = self.thunk(meta)
            if meta.numel() <= self.limit:
                new = thunk()
            else:
                new = torch.empty(meta.shape, dtype=meta.dtype)  # never written: no resident pages
                self.thunks[new.data_ptr()] = thunk
            if new.shape != meta.shape or new.dtype != meta.dtype:
                raise RuntimeError(f"checkpoint tensor {tuple(new.shape)} {new.dtype} != {tuple(meta.shape)}")
            self.replaced[id(meta)] = nn.Parameter(new, requires_grad=False) if isinstance(meta, nn.Parameter) else new
        return self.replaced[id(meta)]

    def apply(self, wrapper: ExportDecoder) -> None:
        for module in wrapper.modules():
            self.recipes.update({id(module._buffers[n]): r for n, r in getattr(module, "derived", {}).items()})
        for module in wrapper.modules():
            stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
            for store in stores:
                for name, t in list(store.items()):
                    if t is not None and t.is_meta:
                        store[name] = self.replacement(t)


def _placeholder_view(raw: Any, thunks: dict[int, Callable[[], torch.Tensor]]) -> Callable[[], Any] | None:
    """For an initializer backed by a placeholder: a thunk giving its real value as a TensorProtocol, else None.

    Two cases: the placeholder itself (a parameter or a fused buffer, held as a torch tensor), or a numpy view
    of it that the optimizer folded (``Transpose`` of a large initializer with one consumer is always folded,
    e.g. ``o_proj``/``down_proj`` called as ``nn.Linear``: ``np.transpose`` returns a view, no data read). The
    view's offset and strides are replayed on the real tensor, so the bytes are the folded ones.
    """
    import numpy as np
    from onnx_ir.tensor_adapters import TorchTensor

    if isinstance(raw, torch.Tensor):
        if raw.numel() == 0 or raw.data_ptr() not in thunks:
            return None
        thunk = thunks[raw.data_ptr()]
        if not raw.is_contiguous():
            raise RuntimeError("an initializer is a strided view of a checkpoint tensor; cannot stream it")
        return lambda: TorchTensor(thunk())
    if not isinstance(raw, np.ndarray) or raw.size == 0:
        return None
    base = raw
    while isinstance(base.base, np.ndarray):
        base = base.base
    ptr = int(base.ctypes.data)
    if ptr not in thunks:
        return None
    thunk = thunks[ptr]
    offset, shape, strides, np_dtype = int(raw.ctypes.data) - ptr, raw.shape, raw.strides, raw.dtype

    def view() -> Any:
        import onnx_ir as ir

        real = TorchTensor(thunk()).numpy().reshape(-1).view(np.uint8)[offset:].view(np_dtype)
        arr = np.ascontiguousarray(np.lib.stride_tricks.as_strided(real, shape=shape, strides=strides))
        return ir.Tensor(arr)

    return view


def _stream_initializers(model_ir: Any, thunks: dict[int, Callable[[], torch.Tensor]]) -> int:
    """Point every placeholder-backed initializer at a lazy tensor that computes its real value; returns how
    many. Anything else still pointing into a placeholder would be garbage: refused."""
    ir = require("onnx_ir", "onnx")

    found = 0
    for value in model_ir.graph.initializers.values():
        tensor = value.const_value
        make = _placeholder_view(getattr(tensor, "raw", None), thunks)
        if make is None:
            continue
        value.const_value = ir.LazyTensor(make, dtype=tensor.dtype, shape=tensor.shape, name=value.name)
        found += 1
    return found


def export_streamed(
    checkpoint: Path,
    out_dir: Path,
    *,
    dtype: str = "fp32",
    variant: str = "opset23",
    last_logits_only: bool = False,
    external_data: bool | None = None,
) -> GraphSpec:
    """Export a local safetensors checkpoint to ``out_dir/model.onnx`` (+ ``model.onnx_data``) holding at most
    one weight tensor (and its sources) at a time; the same graph as ``export_decoder_onnx`` on the loaded model."""
    onnx = require("onnx", "onnx")
    ir = require("onnx_ir", "onnx")

    tdtype = graph_torch_dtype(dtype, variant)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    found = meta_model(checkpoint)
    if found is None:
        raise RuntimeError(f"{checkpoint} does not stream (a parameter is not in its safetensors); check streamable()")
    model, ckpt, keys = found
    model = model.to(tdtype)
    wrapper = ExportDecoder(model, variant=variant, last_logits_only=last_logits_only).eval()
    use_ext, nbytes = external_data_decision(wrapper, external_data)
    spec = graph_spec(wrapper, dtype, use_ext, nbytes)
    out_dir.mkdir(parents=True, exist_ok=True)
    materializer = _Materializer(ckpt, keys, tdtype)
    materializer.apply(wrapper)
    program, axes = trace_decoder(wrapper, tdtype)
    model_ir = program.model
    streamed = _stream_initializers(model_ir, materializer.thunks)
    if streamed == 0 and materializer.thunks:
        raise RuntimeError("no initializer of the traced graph is backed by the checkpoint's large tensors")
    del program, wrapper, model, materializer  # the placeholders go; the lazy tensors hold only their thunks
    onnx_path, data_path = out_dir / "model.onnx", out_dir / "model.onnx_data"
    if data_path.exists():
        data_path.unlink()
    if use_ext:
        # Dense, in declaration order (the bytes of a serial write); the onnx.save_model path puts tensors
        # >= 1 KiB outside too. Two workers overlap reading/transposing one tensor with writing another (both
        # release the GIL); their tensors in flight are bounded by WRITE_IN_FLIGHT_BYTES + the largest tensor.
        ir.external_data.unload_from_model(
            model_ir,
            out_dir,
            data_path.name,
            size_threshold_bytes=1023,
            max_workers=WRITE_WORKERS,
            max_in_flight_bytes=WRITE_IN_FLIGHT_BYTES,
        )
    proto = ir.serde.serialize_model(model_ir)
    del model_ir
    finish_proto(proto, axes)
    onnx.save_model(proto, str(onnx_path))
    return spec


def offloaded_reference(checkpoint: Path) -> Any:
    """The fp32 HF model whose weights stay in the checkpoint's safetensors: accelerate's disk offload reads
    each module's weights (cast to fp32) just before it runs and drops them after (the validation reference)."""
    from accelerate import dispatch_model
    from transformers import GenerationConfig

    checkpoint = Path(checkpoint)
    found = meta_model(checkpoint)
    if found is None:
        raise RuntimeError(f"{checkpoint} does not stream (a parameter is not in its safetensors)")
    model, ckpt, keys = found
    index = {
        name: {"safetensors_file": str(ckpt.file[keys[id(p)]]), "weight_name": keys[id(p)], "dtype": "float32"}
        for name, p in model.named_parameters(remove_duplicate=False)
    }
    try:
        cast(Any, model).generation_config = GenerationConfig.from_pretrained(checkpoint)
    except OSError:
        pass
    log = logging.getLogger("accelerate.big_modeling")
    level = log.level
    log.setLevel(logging.ERROR)  # "Some parameters are on the meta device because they were offloaded": meant
    try:
        return dispatch_model(model, device_map={"": "disk"}, offload_index=index, offload_dir=None)
    finally:
        log.setLevel(level)
