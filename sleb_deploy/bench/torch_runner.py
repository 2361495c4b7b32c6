"""The PyTorch eager runner: the Hugging Face checkpoint itself, as ``model.generate`` would run it greedily.

The loop is HF generate's, without its machinery: a prefill with ``logits_to_keep=1`` (generate asks for the
last position only too) filling the model's default cache, then one token per step with the mask grown by one
(prompts are never padded, so the model's own position ids are the contract's). The next token stays on
the device; on CUDA every call ends with ``torch.cuda.synchronize()`` so the caller's clock brackets the
kernels, not their launch.

The 1-block probe is the dense checkpoint with ``remove_blocks`` applied in memory (no file is written).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy.bench.ort_runner import BackendUnavailable


class TorchRunner:
    def __init__(
        self, variant: str, hf_dir: Path, device: str, dtype: str, keep: list[int] | None = None, threads: int = 0
    ) -> None:
        import torch

        from sleb_deploy.models.adapters import remove_blocks
        from sleb_deploy.models.load import load_model, resolve_model

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device visible to PyTorch")
        self._torch = torch
        if threads > 0:
            torch.set_num_threads(threads)  # process-wide, like ONNX Runtime's global pool
        self.variant = variant
        self.device = device
        start = time.perf_counter()
        self.model = load_model(resolve_model(str(hf_dir)), dtype=dtype, device=device)
        if keep is not None:
            remove_blocks(self.model, keep)
        self._sync()
        self.load_s = time.perf_counter() - start
        self.blocks = int(self.model.config.get_text_config().num_hidden_layers)
        params = inspect.signature(self.model.forward).parameters
        self._last_only: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._cache: Any = None
        self._length = 0
        self._tokens: list[Any] = []

    def _sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def _forward(self, ids: Any, total: int) -> None:
        torch = self._torch
        batch = ids.shape[0]
        mask = torch.ones((batch, total), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                cache=self._cache,
                use_cache=True,
                **self._last_only,
            )
            self._cache = out.cache
            self._tokens.append(out.logits[:, -1, :].argmax(dim=-1))
        self._length = total
        self._sync()

    def reserve(self, batch: int, context: int) -> None:
        """Nothing to allocate ahead: the model's default cache grows per step, as in HF generate."""

    def prefill(self, ids: np.ndarray) -> None:
        self._cache = None
        self._tokens = []
        self._forward(self._torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device), ids.shape[1])

    def decode(self) -> None:
        self._forward(self._tokens[-1][:, None], self._length + 1)

    def generated(self) -> np.ndarray:
        out: np.ndarray = self._torch.stack(self._tokens, dim=1).cpu().numpy()
        return out

    def close(self) -> None:
        self._cache = None
        self._tokens = []
        del self.model
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
