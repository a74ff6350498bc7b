"""Escaping text that comes from records (names, error messages, file names) for Markdown and the terminal.

A plugin's name or an exception's message is data, never markup: in a Markdown table cell it must not end the cell
(``|``), the row (a newline) or open raw HTML (``<``); in a paragraph, text outside code spans must not open raw
HTML either; on the terminal, rich must not read ``[red]`` in a name as a style.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from rich.markup import escape as rich_escape

_CODE_SPAN = re.compile(r"(`[^`]*`)")


_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")  # where CommonMark starts raw HTML (a lone "p < 0.05" is text)
_ENTITY = re.compile(r"&(?=#?\w+;)")  # where it reads an entity (a lone "A & B" is text)


def _no_html(text: str) -> str:
    return _TAG_OPEN.sub("&lt;", _ENTITY.sub("&amp;", text))


def md_cell(text: object) -> str:
    """``text`` as the content of one Markdown table cell: no raw HTML, ``\\`` and ``|`` escaped, on one line."""
    flat = " ".join(str(text).splitlines())
    return _no_html(flat.replace("\\", "\\\\").replace("|", "\\|"))


def md_paragraph(text: str) -> str:
    """A paragraph of mqbench's Markdown subset (`code`, **bold**, [text](link)) with no raw HTML outside code
    spans (inside them Markdown shows HTML as text), on one line."""
    flat = " ".join(text.splitlines())
    return "".join(part if part.startswith("`") and part.endswith("`") and len(part) > 1 else _no_html(part)
                   for part in _CODE_SPAN.split(flat))


def md_link(target: str) -> str:
    """A link target (a relative path) that cannot end the link early: spaces, brackets, parentheses, quotes and
    angle brackets percent-encoded (``/``, ``#``, ``:``, ``+`` and the other URL sub-delimiters kept)."""
    return quote(target, safe="/#:+@!$&*,;=~")


def term(text: object) -> str:
    """``text`` for rich's markup: square brackets escaped."""
    return rich_escape(str(text))


__all__ = ["md_cell", "md_link", "md_paragraph", "term"]
