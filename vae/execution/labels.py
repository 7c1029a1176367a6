"""Tags and a free-text note per run: what a researcher writes about a run, kept in the run's
folder (labels.json) beside its settings. Checked here so the app and the CLI accept the same."""

from __future__ import annotations

LABELS_FILE = "labels.json"
MAX_LABELS_BYTES = 64 * 1024
MAX_TAGS = 32
MAX_TAG_CHARS = 40
MAX_NOTE_CHARS = 4_000


def clean_tags(tags) -> list[str]:
    """Tags trimmed, without blanks or repeats, in the order given; ValueError says what is wrong."""
    if isinstance(tags, str) or not isinstance(tags, list | tuple):
        raise ValueError("tags must be a list of words")
    cleaned: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ValueError("each tag must be text")
        tag = " ".join(tag.split())
        if len(tag) > MAX_TAG_CHARS:
            raise ValueError(f"a tag has at most {MAX_TAG_CHARS} characters: {tag[:20]!r}…")
        if tag and tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per run")
    return cleaned


def clean_labels(data) -> dict:
    """{"tags": [...], "note": "..."} from a file or a caller; ValueError for anything else."""
    if not isinstance(data, dict):
        raise ValueError("labels must be a dictionary")
    note = data.get("note", "")
    if not isinstance(note, str):
        raise ValueError("the note must be text")
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"a note has at most {MAX_NOTE_CHARS:,} characters")
    return {"tags": clean_tags(data.get("tags", [])), "note": note.strip()}


def parse_tags(text: str) -> list[str]:
    """'a, b c' -> ['a', 'b c']: tags are separated by commas."""
    return clean_tags([t for t in str(text).split(",")])
