"""Profile math: prefill and decode shapes, mask = past + sequence at every point, bad configs refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sleb_deploy.contract import input_names
from sleb_deploy.engines.profiles import PROFILE_NAMES, BuildConfig, optimization_profiles, profiles_to_json
from sleb_deploy.errors import UserInputError

CONFIGS = [
    BuildConfig(),
    BuildConfig(max_batch=8, opt_batch=2, max_input_len=128, opt_input_len=1, max_context_len=4096),
    BuildConfig(max_batch=1, max_input_len=2, max_context_len=2),  # the smallest legal engine
    BuildConfig(min_batch=4, max_batch=4, max_input_len=1024, max_context_len=1024, opt_context_len=1024),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_every_point_has_mask_equal_past_plus_sequence(cfg: BuildConfig) -> None:
    profiles = optimization_profiles(cfg, num_layers=3, num_kv_heads=2, head_dim=8)
    assert len(profiles) == len(PROFILE_NAMES) == 2
    for prof in profiles:
        assert list(prof) == input_names(3)
        for k in range(3):  # min, opt, max each on its own
            batch, seq = prof["input_ids"][k]
            assert prof["position_ids"][k] == (batch, seq)
            for i in range(3):
                for kind in ("key", "value"):
                    b, heads, past, dim = prof[f"past_key_values.{i}.{kind}"][k]
                    assert (b, heads, dim) == (batch, 2, 8)
                    assert prof["attention_mask"][k] == (batch, past + seq)
            assert [p[k][0] for p in prof.values()] == [batch] * len(prof)


def test_prefill_and_decode_ranges() -> None:
    cfg = BuildConfig(
        max_batch=4, opt_batch=2, max_input_len=64, opt_input_len=16, max_context_len=256, opt_context_len=100
    )
    prefill, decode = optimization_profiles(cfg, num_layers=1, num_kv_heads=3, head_dim=64)
    assert prefill["input_ids"] == ((1, 1), (2, 16), (4, 64))
    assert [p[2] for p in prefill["past_key_values.0.key"]] == [0, 0, 0]
    assert decode["input_ids"] == ((1, 1), (2, 1), (4, 1))
    assert [p[2] for p in decode["past_key_values.0.value"]] == [1, 99, 255]
    assert decode["attention_mask"] == ((1, 2), (2, 100), (4, 256))


def test_defaults_are_filled_in() -> None:
    cfg = BuildConfig(max_batch=3, max_input_len=9, max_context_len=20).resolved()
    assert (cfg.opt_batch, cfg.opt_input_len, cfg.opt_context_len) == (3, 4, 10)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(max_input_len=512, max_context_len=256), "exceeds max_context_len"),
        (dict(min_batch=2, max_batch=1), "batch sizes"),
        (dict(max_batch=4, opt_batch=8), "batch sizes"),
        (dict(max_batch=0), "batch sizes"),
        (dict(opt_input_len=0), "input lengths"),
        (dict(max_input_len=8, opt_input_len=9), "input lengths"),
        (dict(max_input_len=1, max_context_len=1), "at least 2"),
        (dict(opt_context_len=1), "opt_context_len"),
        (dict(max_context_len=64, max_input_len=32, opt_context_len=65), "opt_context_len"),
        (dict(builder_optimization_level=9), "builder_optimization_level"),
        (dict(workspace_mib=0), "workspace_mib"),
    ],
)
def test_inconsistent_configs_raise(kwargs: dict[str, int], words: str) -> None:
    with pytest.raises(UserInputError, match=words):
        optimization_profiles(BuildConfig(**kwargs), num_layers=2, num_kv_heads=2, head_dim=8)  # type: ignore[arg-type]


@pytest.mark.parametrize("dims", [(0, 2, 8), (2, 0, 8), (2, 2, 0)])
def test_bad_graph_dims_raise(dims: tuple[int, int, int]) -> None:
    with pytest.raises(UserInputError):
        optimization_profiles(BuildConfig(), *dims)


def test_profiles_to_json() -> None:
    profiles = optimization_profiles(BuildConfig(max_batch=1, max_input_len=8, max_context_len=16), 2, 2, 4)
    data = profiles_to_json(profiles)
    assert [d["name"] for d in data] == ["prefill", "decode"]
    assert data[1]["shapes"]["attention_mask"] == {"min": [1, 2], "opt": [1, 8], "max": [1, 16]}


def test_importing_engines_imports_no_tensorrt() -> None:
    code = (
        "import sys, sleb_deploy.engines, sleb_deploy.engines.build, sleb_deploy.engines.limits, "
        "sleb_deploy.engines.trt_runner, sleb_deploy.bench.trt_runner; "
        "bad = [m for m in ('tensorrt', 'tensorrt_rtx', 'onnx') if m in sys.modules]; "
        "assert not bad, bad; "
        "import torch; assert not torch.cuda.is_initialized()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
