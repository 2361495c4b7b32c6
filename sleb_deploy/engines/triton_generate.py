"""The ``generate`` model: greedy KV-cache generation inside Triton's python backend, with ``OrtGenerator``.

The repository writer (``triton_onnx.py``) puts the exported directory (graph, tokenizer, generation config)
in ``<repo>/generate/1/`` next to a ``model.py`` that only re-exports ``TritonPythonModel`` from here, so the
server's Python environment needs this package (installed without its dependencies), numpy < 2,
onnxruntime and, for text in/out, transformers (no torch). ``scripts/triton_env.sh`` builds such an
environment around the ``tritonserver`` of ``nvidia-pytriton``.

A request carries one batch: ``text`` (strings) or ``input_ids`` (+ ``attention_mask``, left or right
padded: rows are re-packed to the left, which is what the graph's position rule expects), and optionally
``max_new_tokens``. The whole loop (prefill + one decode step per token) runs here, so a request costs one
round trip instead of one per token; the KV cache never leaves the server process. Requests are not merged
with each other: each is its own batch (see engines/README.md, "what the batcher can batch").

Both KV-cache contracts run here, as ``OrtGenerator`` runs them (engines/README.md section 5c): a static-cache
graph gets fresh buffers per request, ``prompt + max_new_tokens`` slots long (or the graph's fixed
``max_cache_len``), bound in place; a request its fixed buffer cannot hold gets an error response naming the
limit, like every other refused request.

``Generation`` is plain Python (numpy, onnxruntime): the tests drive it without a server, and
``TritonPythonModel`` is the thin Triton wrapper around it. The wrapper's ``triton_python_backend_utils``
exists only inside the python backend's stub process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy import contract
from sleb_deploy.errors import UserInputError
from sleb_deploy.export.ort_generate import OrtGenerator

# The generate model's tensors: (name, Triton type, dims, optional). Written into config.pbtxt by the
# repository writer and read back here, so they are spelled once.
GENERATE_INPUTS: tuple[tuple[str, str, tuple[int, ...], bool], ...] = (
    ("text", "TYPE_STRING", (-1,), True),
    ("input_ids", "TYPE_INT64", (-1, -1), True),
    ("attention_mask", "TYPE_INT64", (-1, -1), True),
    ("max_new_tokens", "TYPE_INT32", (1,), True),
)
GENERATE_OUTPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("output_ids", "TYPE_INT64", (-1, -1)),  # new tokens only, [batch, n]; after EOS: the pad id
    ("output_lengths", "TYPE_INT32", (-1,)),  # new tokens per row up to and including EOS
    ("text_output", "TYPE_STRING", (-1,)),  # the new tokens decoded (empty strings without a tokenizer)
)


class GenerateRequestError(ValueError):
    """A request the model refuses (bad shape, over a limit); its message goes back to the client."""


@dataclass(frozen=True)
class GenerateSettings:
    """The generate model's limits and device, carried as ``parameters`` in its config.pbtxt."""

    device: str = "auto"  # auto: ONNX Runtime's CUDA EP when the server's onnxruntime has it, else CPU
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default, one per core)
    max_batch: int = 16  # prompts per request
    max_input_len: int = 2048  # prompt tokens after padding
    max_new_tokens: int = 64  # when the request does not say
    max_new_tokens_limit: int = 1024  # the most a request may ask for

    def to_parameters(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> GenerateSettings:
        """From Triton's ``{"key": {"string_value": "..."}}`` parameters (unknown keys ignored)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in params:
                raw = params[f.name]["string_value"] if isinstance(params[f.name], dict) else params[f.name]
                values[f.name] = raw if f.name == "device" else int(raw)
        return cls(**values)


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for ``device`` (auto, cpu, cuda)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"device cuda asked, but this onnxruntime has only {available}: install onnxruntime-gpu")
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def left_pad(input_ids: np.ndarray, attention_mask: np.ndarray | None, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-pack each row's tokens (mask 1) to the right end, pads on the left; a missing mask means no padding."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise GenerateRequestError(f"input_ids must be [batch, length] with both > 0, got shape {list(ids.shape)}")
    if attention_mask is None:
        return ids, np.ones_like(ids)
    mask = np.asarray(attention_mask, dtype=np.int64)
    if mask.shape != ids.shape:
        raise GenerateRequestError(f"attention_mask shape {list(mask.shape)} differs from input_ids {list(ids.shape)}")
    lengths = (mask != 0).sum(axis=1)
    if (lengths == 0).any():
        raise GenerateRequestError("every row of attention_mask needs at least one token (a 1)")
    width = int(lengths.max())
    out_ids = np.full((ids.shape[0], width), pad_id, dtype=np.int64)
    out_mask = np.zeros((ids.shape[0], width), dtype=np.int64)
    for row in range(ids.shape[0]):
        tokens = ids[row][mask[row] != 0]
        out_ids[row, width - len(tokens) :] = tokens
        out_mask[row, width - len(tokens) :] = 1
    return out_ids, out_mask


class Generation:
    """Greedy generation over an exported directory (``model.onnx`` + tokenizer + generation_config.json)."""

    def __init__(self, model_dir: Path, settings: GenerateSettings | None = None) -> None:
        import onnxruntime as ort

        self.dir = Path(model_dir)
        self.settings = settings or GenerateSettings()
        options = ort.SessionOptions()
        if self.settings.threads > 0:
            options.intra_op_num_threads = self.settings.threads
        self.providers = providers_for(self.settings.device)
        self.generator = OrtGenerator(self.dir / "model.onnx", session_options=options, providers=self.providers)
        gen_path = self.dir / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
        eos = gen.get("eos_token_id")
        self.eos: int | None = eos[0] if isinstance(eos, list) else eos
        pad = gen.get("pad_token_id")
        self.pad: int = int(contract.fill_token(self.eos, pad))
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The exported tokenizer (transformers, loaded on first use), left padding as the graph wants."""
        if self._tokenizer is None:
            if not (self.dir / "tokenizer_config.json").is_file() and not (self.dir / "tokenizer.json").is_file():
                raise GenerateRequestError("this model has no tokenizer: send input_ids instead of text")
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(self.dir))
            tok.padding_side = "left"
            if tok.pad_token_id is None:
                tok.pad_token_id = self.pad
            self._tokenizer = tok
        return self._tokenizer

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            raise GenerateRequestError("text is empty: send at least one prompt")
        enc = self.tokenizer(texts, return_tensors="np", padding=True)
        return np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["attention_mask"], dtype=np.int64)

    def decode(self, new_ids: np.ndarray, lengths: np.ndarray) -> list[str]:
        if self._tokenizer is None and not (self.dir / "tokenizer.json").is_file():
            return ["" for _ in lengths]
        return [
            self.tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(new_ids, lengths, strict=True)
        ]

    def check(self, ids: np.ndarray, max_new_tokens: int) -> None:
        s = self.settings
        if ids.shape[0] > s.max_batch:
            raise GenerateRequestError(f"batch {ids.shape[0]} is over this model's max_batch {s.max_batch}")
        if ids.shape[1] > s.max_input_len:
            raise GenerateRequestError(f"prompt of {ids.shape[1]} tokens is over max_input_len {s.max_input_len}")
        if not 1 <= max_new_tokens <= s.max_new_tokens_limit:
            raise GenerateRequestError(f"max_new_tokens must be 1..{s.max_new_tokens_limit}, got {max_new_tokens}")

    def generate(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None, max_new_tokens: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(new tokens [batch, n] with the pad id after EOS, new tokens per row up to and including EOS)."""
        ids, mask = left_pad(input_ids, attention_mask, self.pad)
        n = self.settings.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        self.check(ids, n)
        try:
            out = self.generator.generate(ids, mask, n, eos_token_id=self.eos, pad_token_id=self.pad)
        except UserInputError as err:  # e.g. a static graph's fixed buffer too short: refused before running
            raise GenerateRequestError(str(err)) from None
        new = out[:, ids.shape[1] :]
        lengths = np.full(new.shape[0], new.shape[1], dtype=np.int32)
        if self.eos is not None:
            hit = new == self.eos
            lengths = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, new.shape[1]).astype(np.int32)
        return new, lengths


def _strings(array: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array).reshape(-1)]


class TritonPythonModel:
    """Triton's python-backend entry point (``model.py`` re-exports it). Runs in the server's stub process."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        settings = GenerateSettings.from_parameters(config.get("parameters", {}))
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.generation = Generation(model_dir, settings)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                outputs = self._run(pb_utils, request)
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except GenerateRequestError as err:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
        return responses

    def _run(self, pb_utils: Any, request: Any) -> list[Any]:
        def get(name: str) -> np.ndarray | None:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else tensor.as_numpy()

        text, ids, mask, limit = get("text"), get("input_ids"), get("attention_mask"), get("max_new_tokens")
        if (text is None) == (ids is None):
            raise GenerateRequestError("send either text or input_ids (one of the two)")
        if text is not None:
            ids, mask = self.generation.encode(_strings(text))
        assert ids is not None  # one of the two, checked above
        n = None if limit is None else int(np.asarray(limit).reshape(-1)[0])
        new, lengths = self.generation.generate(ids, mask, n)
        texts = np.array([t.encode("utf-8") for t in self.generation.decode(new, lengths)], dtype=np.object_)
        return [
            pb_utils.Tensor("output_ids", new.astype(np.int64)),
            pb_utils.Tensor("output_lengths", lengths.astype(np.int32)),
            pb_utils.Tensor("text_output", texts),
        ]
