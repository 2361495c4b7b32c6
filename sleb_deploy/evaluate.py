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
    tokens: int  # predicted tokens: windows x (seq_len - 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def perplexity(model: nn.Module, windows: Any, batch_size: int = 1) -> Perplexity:
    """exp(mean NLL) over the windows, each window scored on its own (no context carried over)."""
    from sleb_deploy.prune.scoring import batches, model_nll

    nll = model_nll(model, batches(windows, batch_size))
    tokens = int(windows.shape[0] * (windows.shape[1] - 1))
    return Perplexity(math.exp(nll / tokens), nll, tokens)


def eval_perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    windows: int,
    seq_len: int,
    batch_size: int = 1,
) -> tuple[Perplexity, dict[str, Any]]:
    """Perplexity on consecutive windows from the start of `source` (the evaluation split)."""
    ids, spec = draw_windows(tokenizer, source, windows, seq_len, seed=None, split="eval")
    return perplexity(model, ids, batch_size), spec.to_json()
