"""Tiny random models of every supported family, their ONNX exports (cached per session), a real
(trained-here) tokenizer, and a local text. The one place tests get a tiny model from.

No downloads: configs are built in code, the tokenizer is a byte-level BPE trained on the test text.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "opt", "phi3", "gemma2", "gemma3_text")
VOCAB = 320

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip

TEXT = (
    "The river runs past the old mill and under the stone bridge, where children count the boats. "
    "In spring the water rises, the meadows flood, and the miller waits for the wheel to turn again. "
    "Numbers like 17, 256 and 4096 appear in ledgers kept by the clerk, who writes slowly and well. "
) * 60


def tiny_config(family: str, num_layers: int = 6, **overrides: Any) -> Any:
    """A small config per family that exercises its quirks: GQA everywhere, q/k norms and an explicit head_dim
    (Qwen3, Gemma), partial rotary (Phi-3), sliding windows shorter than the test prompts and logit softcaps
    (Gemma-2 attention, Gemma-3 final), OPT's project_in/out. ``overrides``: config fields to change."""
    import transformers as tf

    if family == "opt":
        return tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=num_layers, num_attention_heads=4,
            word_embed_proj_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            **overrides,
        )  # fmt: skip
    cls = {
        "llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
        "phi3": tf.Phi3Config, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig,
    }[family]  # fmt: skip
    extra: dict[str, Any] = {}
    if family in ("qwen3", "gemma2", "gemma3_text"):
        extra["head_dim"] = 8
    if family == "mistral":
        extra["sliding_window"] = None
    if family == "phi3":
        extra["partial_rotary_factor"] = 0.5
    if family in ("gemma2", "gemma3_text"):
        # Gemma-2's attn_logit_softcapping (default 50) sends it down the MatMul/Softmax attention path.
        extra.update(sliding_window=4, query_pre_attn_scalar=8 if family == "gemma2" else 16)
        extra["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    if family == "gemma3_text":
        extra["final_logit_softcapping"] = 30.0
    if family == "qwen2":
        extra["layer_types"] = ["full_attention"] * num_layers
    return cls(num_hidden_layers=num_layers, **{**_COMMON, **extra, **overrides})


def tiny_model(family: str, num_layers: int = 6, seed: int = 0, *, scaled: bool = True, **overrides: Any) -> Any:
    """A random fp32 model of ``tiny_config``. ``scaled``: weights scaled up (pruning tests, see below); the
    export tests keep transformers' own small init, whose activations suit fixed numeric tolerances."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, num_layers, **overrides), dtype=torch.float32)
    if not scaled:
        return model.eval()
    # Random init leaves blocks tiny and logits flat; scale weights up so blocks differ measurably and the
    # model is confident about its own greedy text (the known-answer tests rely on that).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if ("embed_tokens" in name or "lm_head" in name) else 0.4)
            elif family.startswith("gemma") and "post_" in name:
                p.fill_(5.0)  # Gemma norms block outputs; (1 + 5) lets blocks outweigh the scaled embedding
    return model.eval()


class ExportCache:
    """Exports each tiny (family, variant, dtype, last-logits, layers) once per session (the ``exports``
    fixture); the model is ``tiny_model(family, num_layers, scaled=False)``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[tuple[Any, ...], tuple[Any, Path, Any]] = {}

    def get(
        self,
        family: str,
        variant: str | None = None,
        dtype: str = "fp32",
        last: bool = False,
        num_layers: int = 3,
        kv_cache: str = "concat",
        max_cache_len: int | None = None,
        static_attention: str | None = None,
    ) -> tuple[Any, Path, Any]:
        """(fp32 torch model, path of model.onnx, GraphSpec). ``max_cache_len``: a static graph's fixed buffer;
        ``static_attention`` as ``export_decoder_onnx``'s."""
        from sleb_deploy.export.onnx_graph import DEFAULT_VARIANT, export_decoder_onnx

        variant = variant or DEFAULT_VARIANT
        key = (family, variant, dtype, last, num_layers, kv_cache, max_cache_len, static_attention)
        if key not in self.done:
            model = tiny_model(family, num_layers, scaled=False)
            out = self.root / "-".join(map(str, (family, variant, dtype, int(last), *key[4:])))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spec = export_decoder_onnx(
                    model,
                    out,
                    dtype=dtype,
                    variant=variant,
                    last_logits_only=last,
                    kv_cache=kv_cache,
                    max_cache_len=max_cache_len,
                    static_attention=static_attention,
                )
            self.done[key] = (model, out / "model.onnx", spec)
        return self.done[key]


def write_export_manifest(directory: Path, spec: Any) -> None:
    """An ``export.json`` like the export stage's for a tiny export (hosts and builders read the graph from it)."""
    from sleb_deploy.export.manifest import ExportManifest
    from sleb_deploy.models.load import ModelSource

    source = ModelSource("tiny", "local", str(directory), None)
    ExportManifest(model=source, graph=spec, validation={}, pruning={"pruned": False}, options={}).write(directory)


def make_identity(model: Any, block: int) -> None:
    """Zero the attention output and MLP down projections of `block`: it then adds nothing to the residual."""
    from sleb_deploy.models.adapters import adapter_for

    layer = adapter_for(model).blocks(model)[block]
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if any(key in name for key in ("o_proj", "down_proj", "out_proj", "fc2")):
                p.zero_()


def train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def save_checkpoint(model: Any, tokenizer: Any, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
