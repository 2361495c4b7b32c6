"""Deterministic stand-ins for the bench's clock, runners and backend: the bookkeeping tests time these.

A ``FakeRunner`` advances a ``FakeClock`` by a cost that is exactly linear in its number of blocks
(``fixed + blocks * per_block`` per token), so the ideal line through dense and probe predicts the pruned
time exactly and every figure of a record is known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sleb_deploy.bench.backends import Backend
from sleb_deploy.bench.ort_runner import BackendUnavailable
from sleb_deploy.bench.workspace import Variant

FIXED, PER_BLOCK = 0.004, 0.001  # seconds per prompt token (prefill) and per decode step


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeRunner:
    variant: str
    blocks: int
    clock: FakeClock
    log: list[str]
    fail_batch: int | None = None  # raise an allocation failure at this batch size
    max_batch: int | None = None  # an engine's limits
    max_input_len: int | None = None
    max_context_len: int | None = None
    max_cache_len: int | None = None  # a static-cache graph's fixed buffer
    load_s: float = 0.5
    closed: bool = False
    reserved: list[tuple[int, int]] = field(default_factory=list)
    _tokens: list[np.ndarray] = field(default_factory=list)

    def reserve(self, batch: int, context: int) -> None:
        self.reserved.append((batch, context))

    def _cost(self) -> float:
        return FIXED + self.blocks * PER_BLOCK

    def prefill(self, ids: np.ndarray) -> None:
        if self.fail_batch is not None and ids.shape[0] >= self.fail_batch:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for 4 GB")
        self.log.append(f"prefill {self.variant}")
        self.clock.now += self._cost() * ids.shape[1]
        self._tokens = [ids[:, -1]]

    def decode(self) -> None:
        self.clock.now += self._cost()
        self._tokens.append(self._tokens[-1] + 1)

    def generated(self) -> np.ndarray:
        return np.stack(self._tokens, axis=1)

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class FakeBackend(Backend):
    """A backend whose runners are ``FakeRunner``s on one shared clock; ``free`` is the memory it reports."""

    clock: Any = None
    log: Any = None
    free: float | None = None
    fail_batch: int | None = None
    max_batch: int | None = None
    max_input_len: int | None = None
    max_context_len: int | None = None
    max_cache_len: int | None = None
    runners: Any = None  # list the runners land in, to check they get closed

    def load(self, variant: Variant, threads: int, dtype: str) -> Any:
        if variant.name == "unloadable":
            raise BackendUnavailable("cannot load this one")
        runner = FakeRunner(
            variant.name, variant.blocks, self.clock, self.log, self.fail_batch, self.max_batch,
            self.max_input_len, self.max_context_len, self.max_cache_len,
        )  # fmt: skip
        self.runners.append(runner)
        return runner

    def reset_peak(self) -> None:
        pass

    def peak(self) -> dict[str, float | None]:
        return {"peak_rss_mb": 123.0, "cuda_max_allocated_mb": None}

    def free_mb(self) -> float | None:
        return self.free

    def release_cache(self) -> None:
        self.log.append("release")


def fake_backend(key: str = "fake-cpu", **kw: Any) -> FakeBackend:
    return FakeBackend(key, "fake", "cpu", clock=kw.pop("clock", FakeClock()), log=[], runners=[], **kw)


def fake_graph(**kw: Any) -> Any:
    from sleb_deploy.contract import GraphSpec

    fields = dict(num_layers=6, num_kv_heads=2, head_dim=8, vocab_size=320, dtype="fp32", opset=23,
                  variant="opset23", last_logits_only=False, model_type="llama", external_data=False)  # fmt: skip
    fields.update(kw)
    return GraphSpec(**fields)  # type: ignore[arg-type]


def fake_workspace(max_context: int | None = 256) -> Any:
    from pathlib import Path

    from sleb_deploy.bench.workspace import Workspace
    from sleb_deploy.models.load import ModelSource

    return Workspace(
        root=Path("/nowhere/export/fake"), name="fake",
        dense=Variant("dense", 6, None, None), pruned=Variant("pruned", 4, None, None),
        graph=fake_graph(), export_options={}, model_source=ModelSource("fake", "local", "/nowhere", None),
        max_context=max_context, sleb=None,
    )  # fmt: skip


def fake_variants() -> list[Variant]:
    return [Variant("dense", 6, None, None), Variant("pruned", 4, None, None), Variant("probe", 1, None, None)]
