"""The runs table: every setting and final metric of every run, its tags and note, as rows of plain
values. The Runs page, the CSV download and `python -m vae list` all read these rows (no pandas,
no torch here: `list` must start fast).

Settings columns come from the declarations (vae/learn/fields.py): a new setting is a new column
without an edit here. A setting that does not apply to a run (σ of a bernoulli run) is blank.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Mapping

from vae.execution.store import RunRecord
from vae.learn.fields import SETTINGS, cell, differing
from vae.present.units import unit_counts

# Final metrics: key -> (column header, decimals; None: a whole number or text).
METRICS: dict[str, tuple[str, int | None]] = {
    "epoch": ("epoch", None),
    "rate": ("R (nats)", 2),
    "distortion": ("D (nats)", 2),
    "neg_elbo": ("−ELBO (nats)", 2),
    "iwae": ("IWAE log p(x) ≥", 2),
    "informative": ("informative dims", None),
    "active_units": ("active units", None),
    "mig": ("MIG", 3),
    "images_per_s": ("img/s", 0),
}
DEFAULT_COLUMNS = (
    "run", "name", "beta", "rate", "distortion", "neg_elbo", "iwae", "informative",
    "active_units", "mig", "state", "tags",
)  # fmt: skip


def default_columns(rows: list[Mapping]) -> list[str]:
    """DEFAULT_COLUMNS, with the settings that differ among these runs after β (a store of two
    learning rates shows the learning rate without asking)."""
    varying = [n for n in differing([r for r in rows if r.get("state") != "broken"])]
    varying = [n for n in varying if n not in DEFAULT_COLUMNS and n != "created"]
    at = DEFAULT_COLUMNS.index("beta") + 1
    return [*DEFAULT_COLUMNS[:at], *varying, *DEFAULT_COLUMNS[at:]]


def headers() -> dict[str, str]:
    """Every column key -> its header, in table order: who, settings, metrics, labels."""
    out = {"run": "run", "state": "state"}
    for s in SETTINGS.values():
        out[s.name] = f"{s.label} ({s.unit})" if s.unit else s.label
    out.update({k: header for k, (header, _) in METRICS.items()})
    out.update({"tags": "tags", "note": "note", "created": "created"})
    return out


def final_metrics(record: RunRecord) -> dict:
    """The latest epoch's test-set numbers, with the evaluation's IWAE and MIG where computed."""
    m = record.last_metrics
    evaluation = record.evaluation or {}
    counts = unit_counts(m) if m.get("kl_per_dim") else None
    return {
        "epoch": m.get("epoch"),
        "rate": m.get("rate"),
        "distortion": m.get("distortion"),
        "neg_elbo": -m["elbo"] if m.get("elbo") is not None else None,
        "iwae": evaluation.get("iwae"),
        "informative": counts.informative if counts else None,
        "active_units": counts.active if counts else m.get("active_units"),
        "mig": evaluation.get("mig"),
        "images_per_s": m.get("images_per_s"),
    }


def run_row(record: RunRecord, labels: Mapping | None = None) -> dict:
    """One run as a row: run, state, every setting (None where it does not apply), final metrics,
    tags, note and creation time."""
    labels = labels or {}
    row: dict = {"run": record.run_id, "state": record.state}
    if record.broken or record.config is None:
        row.update({name: None for name in SETTINGS})
        row.update({name: None for name in METRICS})
        row["note"] = record.broken or ""
    else:
        values = record.config.to_dict()
        row.update({name: cell(values, name) for name in SETTINGS})
        row.update(final_metrics(record))
        row["note"] = labels.get("note", "")
    row["tags"] = list(labels.get("tags", []))
    created = record.status.get("created")
    row["created"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else ""
    return row


def rows_of(records: Iterable[RunRecord], read_labels) -> list[dict]:
    """Rows of every record; `read_labels(run_id)` gives a run's tags and note."""
    return [run_row(r, read_labels(r.run_id) if not r.broken else {}) for r in records]


def text(key: str, value) -> str:
    """A cell as a report writes it: numbers to their precision, blank for nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key in SETTINGS:
        return SETTINGS[key].text(value)
    if key in METRICS:
        decimals = METRICS[key][1]
        if decimals is None or isinstance(value, str):
            return str(value)
        return f"{value:,.{decimals}f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def matches(row: Mapping, query: str = "", tags: Iterable[str] = (), where=()) -> bool:
    """Whether a row passes the filters: free text in any cell, every tag, and KEY=VALUE pairs
    (compared as the table writes the value: lr=0.003, dynamic_binarization=on)."""
    for tag in tags:
        if tag not in row.get("tags", []):
            return False
    for key, wanted in where:
        if key not in row or text(key, row[key]) != wanted and str(row[key]) != wanted:
            return False
    if query:
        needle = query.casefold()
        return any(needle in text(k, v).casefold() for k, v in row.items())
    return True


def diff_rows(rows: list[Mapping]) -> list[dict]:
    """The settings on which the rows differ: one dict per setting, its value in each run."""
    names = differing(rows)
    return [
        {"setting": headers()[name], **{row["run"]: text(name, row.get(name)) for row in rows}}
        for name in names
    ]


def csv_value(key: str, value):
    """A cell for the CSV: numbers at full precision, lists and switches as the table writes
    them, blank for nothing."""
    if value is None:
        return ""
    if key == "tags":
        return ", ".join(value)
    if isinstance(value, list | bool):
        return text(key, value)
    return value


def to_csv(rows: list[Mapping]) -> bytes:
    """Every column of every row: each setting, the final metrics, tags and note."""
    keys = list(headers())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(keys)
    for row in rows:
        writer.writerow([csv_value(k, row.get(k)) for k in keys])
    return buffer.getvalue().encode()


def sort_rows(rows: list[dict], key: str, descending: bool = False) -> list[dict]:
    """Rows by one column's raw value (numbers as numbers), blanks last either way."""

    def order(row: dict):
        value = row.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        return (isinstance(value, str), value)

    filled = [r for r in rows if r.get(key) not in (None, "", [])]
    blank = [r for r in rows if r.get(key) in (None, "", [])]
    try:
        filled.sort(key=order, reverse=descending)
    except TypeError:  # mixed kinds in one column: compare as text
        filled.sort(key=lambda r: text(key, r.get(key)), reverse=descending)
    return filled + blank


def display_rows(rows: list[dict], columns: list[str]) -> list[dict]:
    """Rows for the screen: the chosen columns under their headers, each cell as text."""
    names = headers()
    return [{names[c]: text(c, row.get(c)) for c in columns} for row in rows]


def all_tags(rows: list[dict]) -> list[str]:
    return sorted({t for row in rows for t in row.get("tags", [])})
