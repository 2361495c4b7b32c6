"""Tiny random models of every supported family, a real (trained-here) tokenizer, and a local text.

No downloads: configs are built in code, the tokenizer is a byte-level BPE trained on the test text.
"""

from __future__ import annotations

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


def tiny_config(family: str, num_layers: int = 6) -> Any:
    import transformers as tf

    if family == "opt":
        return tf.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=num_layers, num_attention_heads=4,
            word_embed_proj_dim=32, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
    cls = {
        "llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
        "phi3": tf.Phi3Config, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig,
    }[family]  # fmt: skip
    extra: dict[str, Any] = {}
    if family in ("qwen3", "gemma2", "gemma3_text"):
        extra["head_dim"] = 8
    if family in ("gemma2", "gemma3_text"):
        extra.update(sliding_window=16, query_pre_attn_scalar=8)
        extra["layer_types"] = ["sliding_attention" if i % 3 != 2 else "full_attention" for i in range(num_layers)]
    if family == "qwen2":
        extra["layer_types"] = ["full_attention"] * num_layers
    return cls(num_hidden_layers=num_layers, **_COMMON, **extra)


def tiny_model(family: str, num_layers: int = 6, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, num_layers), dtype=torch.float32)
    # Random init leaves blocks tiny and logits flat; scale weights up so blocks differ measurably and the
    # model is confident about its own greedy text (the known-answer tests rely on that).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if ("embed_tokens" in name or "lm_head" in name) else 0.4)
            elif family.startswith("gemma") and "post_" in name:
                p.fill_(5.0)  # Gemma norms block outputs; (1 + 5) lets blocks outweigh the scaled embedding
    return model.eval()


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
