"""The memory plan's arithmetic (prune/plan.py): sizes, forwards, the scorer it picks, and LLaMA-2-70B on 80 GB."""

from __future__ import annotations

import pytest

from sleb_deploy.errors import UserInputError
from sleb_deploy.prune.plan import (
    Calibration,
    ModelShape,
    WeightBytes,
    block_forwards_per_window,
    parse_memory,
    plan_memory,
)
from sleb_deploy.prune.select import num_to_remove

# meta-llama/Llama-2-70b-hf config.json (fp16)
LLAMA2_70B = {
    "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000, "tie_word_embeddings": False,
}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 << 30), ("80GB", 80 * 10**9), ("512 MiB", 512 << 20), ("1.5TB", 15 * 10**11), ("4096", 4096),
     ("2gib", 2 << 30)],
)  # fmt: skip
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["8XB", "", "GB", "-1GB", "0GB", "8 G B"])
def test_parse_memory_rejects_with_one_line(text: str) -> None:
    with pytest.raises(UserInputError, match="--max-memory") as err:
        parse_memory(text)
    assert "\n" not in str(err.value)


def test_llama2_70b_shape() -> None:
    shape = ModelShape.from_config(LLAMA2_70B)
    assert (shape.head_dim, shape.kv_heads, shape.tied) == (128, 8, False)
    # q, o: 8192^2 each; k, v: 8192 x 1024 each; MLP 3 x 8192 x 28672; two norms
    assert shape.block_params() == 2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    weights = WeightBytes.from_shape(shape, 2)
    assert 137e9 < weights.total < 139e9  # the published 69B parameters in fp16


def test_llama2_70b_at_20_percent_with_the_papers_calibration_fits_one_80gb_gpu() -> None:
    shape = ModelShape.from_config(LLAMA2_70B)
    k = num_to_remove(80, None, 0.2)
    calib = Calibration(windows=128, seq_len=2048, batch_size=1, eval_windows=16)
    budget = 80 * 10**9
    plan = plan_memory(shape, calib, k, 2, budget, device="cuda", budget_source="80 GB GPU")
    assert k == 16
    assert plan.scorer == "streamed" and plan.fits and plan.peak_bytes <= budget
    assert plan.weights_bytes > budget > plan.resident_weights_bytes  # the weights alone would not fit
    assert plan.states_on == "device" and plan.window_groups > 1
    # one window's states in phase 1: 79 paths (78 candidates + the unskipped one) x 2048 x 8192 x 2 bytes
    per_window = 79 * 2048 * 8192 * 2
    per_group = -(-128 // plan.window_groups)
    assert plan.states_bytes == per_group * per_window
    # the fewest groups: one group fewer would not fit
    assert plan.resident_weights_bytes + (-(-128 // (plan.window_groups - 1))) * per_window + plan.work_bytes > budget
    assert plan.block_loads == plan.window_groups * sum(range(65, 81)) + 80 + 64
    assert plan.block_forwards == 128 * block_forwards_per_window("cached", 80, 16)
    assert plan.head_forwards == 128 * sum(78 - i for i in range(16))
    cached = plan_memory(shape, calib, k, 2, budget, scorer="cached", device="cuda")
    assert cached.scorer == "cached" and not cached.fits
    assert "streamed scorer on cuda" in plan.summary() and "block loads" in plan.summary()


def test_forwards_match_the_scorers_counts() -> None:
    # the counts test_scoring.py measures with BlockCounter: 8 blocks, 3 phases, default barriers
    assert block_forwards_per_window("naive", 8, 3) == sum((n - 2) * (n - 1) for n in (8, 7, 6))
    assert block_forwards_per_window("cached", 8, 3) == sum((n - 2) * (n - 1) // 2 + (n - 2) for n in (8, 7, 6))
    assert block_forwards_per_window("cached", 6, 1, 1, 0) == 5 + sum(range(5))  # no latter barrier


def test_auto_prefers_cached_then_streamed_then_fails() -> None:
    shape = ModelShape(num_blocks=24, hidden=896, heads=14, kv_heads=2, head_dim=64, intermediate=4864,
                       vocab=151936, tied=True)  # Qwen2.5-0.5B  # fmt: skip
    calib = Calibration(windows=8, seq_len=256)
    big = plan_memory(shape, calib, 5, 4, 64 << 30)
    assert big.scorer == "cached" and big.fits and big.block_loads == 0
    weights = WeightBytes.from_shape(shape, 4).total
    small = plan_memory(shape, calib, 5, 4, weights * 3 // 2)  # under the weights plus the runtime: streamed
    assert small.scorer == "streamed" and small.fits and small.window_groups == 1
    assert not plan_memory(shape, calib, 5, 4, weights * 3 // 2, scorer="cached").fits
    assert small.resident_weights_bytes < weights // 3
    explicit = plan_memory(shape, calib, 5, 4, 64 << 30, scorer="naive")
    assert explicit.scorer == "naive" and explicit.states_bytes == 0
    assert not plan_memory(shape, calib, 5, 4, 100 << 20).fits


def test_states_spill_to_cpu_on_an_accelerator_when_one_group_does_not_fit() -> None:
    shape = ModelShape.from_config(LLAMA2_70B)
    calib = Calibration(windows=4, seq_len=4096)  # one window's states: 79 x 4096 x 8192 x 2 = 5.3 GB
    plan = plan_memory(shape, calib, 16, 2, 8 << 30, device="cuda")
    assert plan.scorer == "streamed" and plan.states_on == "cpu" and plan.fits
    assert plan.host_states_bytes == 79 * 4 * 4096 * 8192 * 2 and plan.states_bytes == 2 * 4096 * 8192 * 2
    on_cpu = plan_memory(shape, calib, 16, 2, 8 << 30, device="cpu")
    assert on_cpu.states_on == "device" and not on_cpu.fits  # no spilling from the CPU to itself
