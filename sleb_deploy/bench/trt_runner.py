"""The TensorRT runner: ``engines/trt_runner.TrtEngine`` cut into timed calls, as ``ort_runner`` does for ORT.

**Runs only on an NVIDIA GPU** (not here, not in CI): see ``engines/trt_runner.py``. The engine's limits come
from its ``engine.json`` (``max_batch``, ``max_input_len``, ``max_context_len``); the sweep reads them from
the runner and skips, with a note naming the build option, every cell the engine was not built for. Prompts
are unpadded, as in every runner; ``prefill``/``decode`` return when the next token is on the host, so the
caller's clock brackets the whole step.

A static-cache engine (``engine.json``: ``build_options.kv_cache`` = ``"static"``) runs through
``TrtEngine.forward_static``: its aliased buffers hold ``max_cache_len`` slots, the runner's ``max_cache_len``
(the sweep skips a cell that writes more, naming ``--max-cache-len``), and each step binds the mask over the
whole buffer and the write position, as ``ort_runner`` does for ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sleb_deploy import contract
from sleb_deploy.bench.ort_runner import BackendUnavailable, static_inputs
from sleb_deploy.errors import SlebDeployError


class TrtRunner:
    def __init__(self, variant: str, engine_dir: Path) -> None:
        from sleb_deploy.engines.trt_runner import TrtEngine

        try:
            self.engine = TrtEngine(engine_dir)
        except SlebDeployError as err:  # no GPU, no module, a plan from elsewhere: skipped with its reason
            raise BackendUnavailable(str(err)) from None
        self.variant = variant
        self.blocks = self.engine.num_layers
        self.load_s = self.engine.load_s
        limits = self.engine.limits
        self.max_cache_len = limits.max_cache_len  # static: the buffer; None: the concatenating contract
        self.max_batch, self.max_input_len = limits.max_batch, limits.max_input_len
        self.max_context_len = None if self.max_cache_len is not None else limits.max_context_len
        self._length = 0
        self._tokens: list[np.ndarray] = []
        self._mask = np.zeros((0, 0), dtype=np.int64)

    def reserve(self, batch: int, context: int) -> None:
        """Nothing to allocate: the engine's buffers are made at load for its max batch and context."""

    def _forward(self, ids: np.ndarray, past_len: int) -> np.ndarray:
        eng = self.engine
        batch, seq = ids.shape
        if self.max_cache_len is not None:  # static: write at past_len, the mask covers the buffer
            if past_len == 0:
                self._mask = np.zeros((batch, self.max_cache_len), dtype=np.int64)
            f = {k: eng.to_device(v) for k, v in static_inputs(ids, self._mask, past_len).items()}
            logits = eng.forward_static(
                f[contract.INPUT_IDS],
                f[contract.ATTENTION_MASK],
                f[contract.POSITION_IDS],
                f[contract.WRITE_INDICES],
                prefill=past_len == 0,
            )
        else:
            mask = np.ones((batch, past_len + seq), dtype=np.int64)
            logits = eng.forward(
                eng.to_device(ids), eng.to_device(mask), eng.to_device(contract.position_ids(mask, seq)), past_len
            )
        out: np.ndarray = logits[:, -1, :].argmax(dim=-1).cpu().numpy().astype(np.int64)  # waits for the step
        return out

    def prefill(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._tokens = [self._forward(ids, 0)]
        self._length = ids.shape[1]

    def decode(self) -> None:
        self._tokens.append(self._forward(self._tokens[-1][:, None], self._length))
        self._length += 1

    def generated(self) -> np.ndarray:
        return np.stack(self._tokens, axis=1)

    def close(self) -> None:
        self.engine.close()
