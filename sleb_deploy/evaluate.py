"""Perplexity on any text source: the quality figure recorded for dense and pruned models."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sleb_deploy.data import draw_windows

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float
    tokens: int  # predicted tokens: windows x (seq_len - 1), under either window semantics

    @classmethod
    def from_nll(cls, nll: float, windows: Any) -> Perplexity:
        """exp(mean NLL) from the summed NLL over ``windows`` [n, W] (W - 1 targets each)."""
        tokens = int(windows.shape[0] * (windows.shape[1] - 1))
        return cls(math.exp(nll / tokens), nll, tokens)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def perplexity(model: nn.Module, windows: Any, batch_size: int = 1) -> Perplexity:
    """exp(mean NLL) over the windows, each window scored on its own (no context carried over).

    Position 0 of a window is context only, never a target: `model_nll` sums next-token NLL, logits at
    positions 0..W-2 against the tokens at 1..W-1. So under `--window-bos always` the BOS is never predicted
    and the same W - 1 text tokens per window are scored as under `never` (where position 0 is a text token
    the model sees without being asked to predict it).
    """
    from sleb_deploy.prune.scoring import batches, model_nll

    return Perplexity.from_nll(model_nll(model, batches(windows, batch_size)), windows)


def eval_perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    windows: int,
    seq_len: int,
    batch_size: int = 1,
    *,
    bos: str = "never",
) -> tuple[Perplexity, dict[str, Any]]:
    """Perplexity on consecutive windows from the start of `source` (the evaluation split); `bos` as in
    `draw_windows` ("never" or "always", already resolved), recorded in the returned spec."""
    ids, spec = draw_windows(tokenizer, source, windows, seq_len, seed=None, split="eval", bos=bos)
    return perplexity(model, ids, batch_size), spec.to_json()
