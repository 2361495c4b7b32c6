"""The TensorRT runner: ``engines/trt_runner.TrtEngine`` cut into timed calls, as ``ort_runner`` does for ORT.

**Runs only on an NVIDIA GPU** (not here, not in CI): see ``engines/trt_runner.py``. The engine's limits come
from its ``engine.json`` (``max_batch``, ``max_input_len``, ``max_context_len``); the sweep reads them from
the runner and skips, with a note naming the build option, every cell the engine was not built for. Prompts
are unpadded, as in every runner; ``prefill``/``decode`` return when the next token is on the host, so the
caller's clock brackets the whole step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sleb_deploy import contract
from sleb_deploy.bench.ort_runner import BackendUnavailable
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
        self.max_batch, self.max_input_len, self.max_context_len = (
            limits.max_batch, limits.max_input_len, limits.max_context_len,
        )  # fmt: skip
        self._length = 0
        self._tokens: list[np.ndarray] = []

    def _forward(self, ids: np.ndarray, past_len: int) -> np.ndarray:
        eng = self.engine
        batch, seq = ids.shape
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
