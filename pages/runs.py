"""Runs: every run's settings and final metrics in one table; filter, sort, compare, tag, note."""

import streamlit as st

from ui import list_runs, refresh_on_change, run_store
from vae.execution.labels import parse_tags
from vae.execution.store import StoreError
from vae.present import runs_table as rt
from vae.present.text import plain_text
from vae.present.views import newest

st.title("Runs")
st.caption(
    "Every run with every setting and its final test-set numbers (IWAE and MIG once evaluated). "
    "Choose columns, filter and sort; pick two or more runs to see only the settings that differ; "
    "tag runs and write a note. A setting that does not apply to a run is blank."
)
store = run_store()
records = list_runs()


def labels_of(run_id: str) -> dict:
    try:
        return store.read_labels(run_id)
    except StoreError:
        return {}


if not records:
    st.info("No runs yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()
    st.stop()

listed, note = newest(records)
rows = rt.rows_of(listed, labels_of)
names = rt.headers()

filters = st.columns([3, 2, 2])
query = filters[0].text_input("Filter", key="runs_filter", help="Text in any cell: a run id, "
                              "a name, a tag, a setting's value (0.003), a state.")  # fmt: skip
tags = filters[1].multiselect("With tags", rt.all_tags(rows), key="runs_tags")
states = filters[2].multiselect("States", sorted({r["state"] for r in rows}), key="runs_states")
shown = [
    r for r in rows if rt.matches(r, query, tags) and (not states or r["state"] in states)
]  # fmt: skip

left, middle, right = st.columns([4, 2, 1], vertical_alignment="bottom")
columns = left.multiselect(
    "Columns", list(names), default=rt.default_columns(rows), key="runs_columns",
    format_func=names.get, help="Every setting and final metric can be a column; the settings "
    "that differ among the runs are shown at first.",
)  # fmt: skip
sort_by = middle.selectbox("Sort by", list(names), key="runs_sort", format_func=names.get)
descending = right.toggle("Descending", key="runs_descending")
shown = rt.sort_rows(shown, sort_by, descending)
if note:
    st.caption(note)
st.caption(f"{len(shown):,} of {len(rows):,} runs")
st.dataframe(rt.display_rows(shown, columns or ["run"]), hide_index=True, key="runs_table")
st.download_button(
    "Download the whole table (CSV)", rt.to_csv(rows), file_name="runs.csv", mime="text/csv",
    key="runs_csv", help="Every run, every setting, final metrics, tags and notes.",
)  # fmt: skip

st.subheader("Compare runs")
ids = [r["run"] for r in shown if r["state"] != "broken"]
picked = st.multiselect("Runs to compare", ids, key="runs_compare", max_selections=12)
if len(picked) >= 2:
    by_id = {r["run"]: r for r in rows}
    differ = rt.diff_rows([by_id[p] for p in picked])
    if differ:
        st.dataframe(differ, hide_index=True, key="runs_diff")
    else:
        st.info("These runs share every setting.")
else:
    st.caption("Pick two or more runs to see only the settings in which they differ.")

st.subheader("Tags and note")
if ids:
    run_id = st.selectbox("Run", ids, key="runs_label_run")
    current = labels_of(run_id)
    with st.form("labels_form", border=False):
        tag_text = st.text_input(
            "Tags (comma-separated)",
            value=", ".join(current.get("tags", [])),
            key=f"runs_tag_text-{run_id}",
        )
        note_text = st.text_area(
            "Note", value=current.get("note", ""), key=f"runs_note_text-{run_id}"
        )
        if st.form_submit_button("Save tags and note"):
            try:
                store.write_labels(run_id, parse_tags(tag_text), note_text)
                st.success(f"Saved for {run_id}")
            except (ValueError, StoreError) as exc:
                st.error(f"Not saved: {plain_text(exc)}")
    saved = labels_of(run_id)
    if saved.get("note"):
        st.caption("Note")
        st.text(saved["note"])  # the note as written: never markup

refresh_on_change()
