"""The external-data rule at protobuf's 2 GiB boundary, decided from the bytes the graph really holds.

Models of real shapes on the meta device: the exporter's wrapper (fused, pre-transposed copies included)
is built from them and counted, nothing is allocated. The tied Qwen2.5-0.5B shape is the case that used to
fail: 1.98 GB of parameters, under the limit, but 2.52 GB in the graph once the head gets its own copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sleb_deploy import contract
from sleb_deploy.errors import UserInputError
from sleb_deploy.export.decoder_module import ExportDecoder
from sleb_deploy.export.onnx_graph import export_decoder_onnx, external_data_decision

QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, tie_word_embeddings=True,
)  # fmt: skip
LIMIT = contract.PROTOBUF_LIMIT - contract.EXTERNAL_DATA_MARGIN


def meta_qwen2(**overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(Qwen2Config(**{**QWEN25_05B, **overrides}), dtype=torch.float32)


def param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() skips tied duplicates


def rope_bytes(wrapper: ExportDecoder) -> int:
    return sum(b.numel() * b.element_size() for b in wrapper.ropes.buffers())


def test_tied_model_under_the_limit_whose_graph_is_over_it() -> None:
    model = meta_qwen2()
    head = model.config.vocab_size * model.config.hidden_size * 4
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert param_bytes(model) < LIMIT  # counting parameters (the old rule) keeps it in one file: it cannot be
    wrapper = ExportDecoder(model)
    use_ext, nbytes = external_data_decision(wrapper, None)
    assert nbytes == param_bytes(model) + head + rope_bytes(wrapper)  # + the untied, pre-transposed head copy
    assert nbytes > contract.PROTOBUF_LIMIT and use_ext


@pytest.mark.parametrize(("layers", "over"), [(16, False), (17, True)])
def test_untied_model_either_side_of_the_limit(layers: int, over: bool) -> None:
    """Untied, the head copy replaces ``lm_head.weight`` and the fused q|k|v and gate|up copies replace their
    sources: the graph holds as many bytes as the parameters (plus the rope table)."""
    model = meta_qwen2(tie_word_embeddings=False, num_hidden_layers=layers)
    wrapper = ExportDecoder(model)
    use_ext, nbytes = external_data_decision(wrapper, None)
    assert nbytes == param_bytes(model) + rope_bytes(wrapper)
    assert (nbytes > LIMIT) is over and use_ext is over
    assert external_data_decision(wrapper, True) == (True, nbytes)  # asked for: always honoured


def test_refusing_external_data_over_the_limit_fails_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    with pytest.raises(UserInputError, match=r"over protobuf.s 2 GiB limit.*drop --no-external-data"):
        export_decoder_onnx(meta_qwen2(), out, external_data=False)
    assert not out.exists()
