"""User text on a page as text, never as markup.

Values from the address (`?beta=[Log in](https://e.vil)`), run names, notes and tags, and file
contents quoted in messages are written by whoever made the link or the file. Streamlit renders
the messages of st.warning, st.markdown and captions as Markdown (links, images, HTML-like tags,
colour directives), so such text goes into a message only through these helpers: shortened to a
readable length, and either inside a code span (shown literally) or with every Markdown
punctuation character escaped.
"""

from __future__ import annotations

import re

SHOWN_CHARS = 60  # an address value longer than this is cut, with an ellipsis
# What can make a link, an image, a tag, a directive, math or code (emphasis is harmless).
_MARKUP = re.compile(r"([\\`\[\]()<>!:$~|])|(?<=www)(\.)", re.IGNORECASE)


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """`value` as one line of at most `limit` characters (an ellipsis marks a cut)."""
    text = " ".join(str(value).split()) if value is not None else ""
    text = "".join(c for c in text if c.isprintable())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code_span(value: object, limit: int = SHOWN_CHARS) -> str:
    """A Markdown code span showing `value` literally (no link, image or tag can come of it)."""
    text = shorten(value, limit)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain_text(value: object, limit: int | None = None) -> str:
    """`value` with every character that could make markup escaped, so it shows as written."""
    text = str(value) if limit is None else shorten(value, limit)
    return _MARKUP.sub(lambda m: "\\" + (m.group(1) or m.group(2)), text)


def refusal_text(message: object) -> str:
    """A refusal's reason for "Refused: …": without a leading "refused:" of its own, as text."""
    text = str(message).strip()
    if text.lower().startswith("refused:"):
        text = text[len("refused:") :].strip()
    return plain_text(text, 400)
