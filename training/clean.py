"""Optional text cleaning before the split: HTML tags and entities out, whitespace normalized.

Tags are removed with the standard library's HTML parser (``convert_charrefs`` also decodes
entities such as ``&amp;`` and ``&#39;``); ``<br>``/``<p>``-style breaks become spaces. The caller
de-duplicates afterwards, so two texts that differ only in markup collapse into one.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import asdict, dataclass
from html.parser import HTMLParser

log = logging.getLogger(__name__)

WHITESPACE = re.compile(r"\s+")
TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]*>")
"""Something that looks like an HTML tag (the parser then decides what it is)."""
ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")


class _TextOnly(HTMLParser):
    """Collects the text content of an HTML fragment; every tag becomes a space."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag, attrs) -> None:
        self.parts.append(" ")

    def handle_endtag(self, tag) -> None:
        self.parts.append(" ")


@dataclass
class CleaningReport:
    """What cleaning did, in texts: each count is the number of texts the step changed or dropped."""

    texts_in: int = 0
    html_tags_stripped: int = 0
    html_entities_decoded: int = 0
    whitespace_normalized: int = 0
    emptied_and_dropped: int = 0
    duplicates_dropped: int = 0
    texts_out: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def strip_html(text: str) -> str:
    """``text`` without HTML tags, with entities decoded."""
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def clean_text(text: str, report: CleaningReport) -> str:
    """One text cleaned, counting each step that changed it in ``report``."""
    out = text
    had_entity = bool(ENTITY.search(out))
    if TAG.search(out):
        out = strip_html(out)
        report.html_tags_stripped += 1
    elif had_entity:
        out = html.unescape(out)
    report.html_entities_decoded += had_entity
    normalized = WHITESPACE.sub(" ", out).strip()
    if normalized != out:
        report.whitespace_normalized += 1
    return normalized
