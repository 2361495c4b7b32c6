"""Tiny random decoders (built from configs, no downloads) and a cached export per family/variant/dtype."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "opt", "phi3", "gemma2", "gemma3_text")


def tiny_model(family: str, dtype: torch.dtype = torch.float32) -> Any:
    """Small random model of a family; configs exercise the family's quirks (qk-norm, bias, windows...)."""
    from transformers import (
        AutoModelForCausalLM,
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    torch.manual_seed(0)
    common: dict[str, Any] = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    cfg: Any
    if family == "llama":
        cfg = LlamaConfig(**common)
    elif family == "mistral":
        cfg = MistralConfig(**common, sliding_window=None)
    elif family == "qwen2":
        cfg = Qwen2Config(**common)
    elif family == "qwen3":
        cfg = Qwen3Config(**common, head_dim=8)
    elif family == "phi3":
        cfg = Phi3Config(**common, pad_token_id=0, partial_rotary_factor=0.5)
    elif family == "gemma2":
        # attn_logit_softcapping (default 50) forces the MatMul/Softmax attention path in opset23 too.
        cfg = Gemma2Config(
            **common,
            head_dim=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=8,
        )
    elif family == "gemma3_text":
        cfg = Gemma3TextConfig(
            **common,
            head_dim=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=16,
            final_logit_softcapping=30.0,
        )
    elif family == "opt":
        cfg = OPTConfig(
            vocab_size=128,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
        )
    else:
        raise ValueError(family)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


class ExportCache:
    """Exports each (family, variant, dtype) once per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[tuple[str, str, str, bool], tuple[Any, Path, Any]] = {}

    def get(
        self, family: str, variant: str | None = None, dtype: str = "fp32", last: bool = False
    ) -> tuple[Any, Path, Any]:
        from sleb_deploy.export.onnx_graph import DEFAULT_VARIANT, export_decoder_onnx

        variant = variant or DEFAULT_VARIANT
        key = (family, variant, dtype, last)
        if key not in self.done:
            model = tiny_model(family)
            out = self.root / f"{family}-{variant}-{dtype}-{int(last)}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spec = export_decoder_onnx(model, out, dtype=dtype, variant=variant, last_logits_only=last)
            self.done[key] = (model, out / "model.onnx", spec)
        return self.done[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> ExportCache:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    return ExportCache(tmp_path_factory.mktemp("onnx"))
