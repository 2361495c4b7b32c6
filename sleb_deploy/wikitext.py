"""Plain text from a MediaWiki XML dump (the gensim wheel's English Wikipedia fragment).

A small markup cleaner, enough for perplexity text: templates, tables, references, files and categories go;
links keep their label; headings and paragraphs stay. It is not a full wikitext parser.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from io import BytesIO

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_FILE_LINK = re.compile(
    r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I
)
_LINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?: ([^\]]*))?\]")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced `open_ ... close` spans (templates `{{ }}`, tables `{| |}`), nesting included."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if depth == 0:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wikitext(text: str) -> str:
    """Markup to readable prose (see module docstring for what is kept)."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = html.unescape(text).replace("\xa0", " ")
    lines = []
    for line in text.splitlines():
        line = _SPACES.sub(" ", line).strip()
        if line.startswith(("*", "#", ":", ";", "|", "!")):
            line = line.lstrip("*#:;|! ")
        lines.append(line)
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def iter_articles(xml_bytes: bytes, min_chars: int = 500) -> Iterator[tuple[str, str]]:
    """(title, cleaned text) of each main-namespace, non-redirect page of a dump."""
    title = ""
    ns = ""
    for _, elem in ET.iterparse(BytesIO(xml_bytes), events=("end",)):
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag == "title":
            title = elem.text or ""
        elif tag == "ns":
            ns = elem.text or ""
        elif tag == "text":
            raw = elem.text or ""
            if ns == "0" and not raw.lstrip().upper().startswith("#REDIRECT"):
                cleaned = clean_wikitext(raw)
                if len(cleaned) >= min_chars:
                    yield title, cleaned
        elif tag == "page":
            elem.clear()
