"""Checkpoints: every run with its files; download a checkpoint or metrics; inspect an upload."""

import streamlit as st

from ui import (
    forget_upload,
    inspect_pending_upload,
    job_manager,
    list_runs,
    pick_run,
    refresh_on_change,
    take_upload,
)
from vae.execution.checkpoint import MAX_UPLOAD_BYTES, checkpoint_problem, load_run_checkpoint
from vae.execution.export import export_zip
from vae.execution.film import FILM_FILE
from vae.execution.store import StoreError
from vae.learn.evaluate import MIG_NOTE
from vae.present.film_view import run_gif
from vae.present.text import code_span, plain_text, refusal_text
from vae.present.views import BROKEN_SHOWN, metrics_csv, newest, runs_frame

st.title("Checkpoints")
st.caption(
    "Every run in the store with its files. **final.pt** is the trained model to share (weights, "
    "config, last metrics); **model.pt** is the latest epoch with the optimizer state, used to "
    "resume. Both open with `torch.load(weights_only=True)`."
)
manager = job_manager()
store = manager.store
records = list_runs()
DELETED = "_checkpoints_deleted"  # session state: what the last Delete said


def neighbour(records, run_id: str) -> str | None:
    """The run listed next to this one (after it, else before): where the page goes after a
    Delete, instead of jumping to whatever run is newest."""
    ids = [r.run_id for r in records if not r.broken]
    if run_id not in ids or len(ids) < 2:
        return None
    at = ids.index(run_id)
    return ids[at + 1] if at + 1 < len(ids) else ids[at - 1]


def delete_run(run_id: str, then: str | None) -> None:
    """The confirm button's callback: it runs before the page redraws, so the picker can be
    moved to the neighbouring run before it is drawn."""
    try:
        manager.delete(run_id)
    except StoreError as exc:
        st.session_state[DELETED] = ("error", str(exc))
        return
    st.session_state[DELETED] = ("success", f"Deleted {run_id}")
    if then is not None:
        st.session_state["pick_run"] = then
        st.query_params["run"] = then


if DELETED in st.session_state:
    kind, message = st.session_state.pop(DELETED)
    (st.success if kind == "success" else st.error)(plain_text(message, 300))

if not records:
    st.info("No runs yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
else:
    listed, note = newest(records)
    if note:
        st.caption(note)
    st.dataframe(runs_frame(listed), hide_index=True)
    broken = [r for r in records if r.broken]
    for r in broken[:BROKEN_SHOWN]:
        st.warning(f"Run folder {r.run_id} is broken: {plain_text(r.broken, 300)}")
    if len(broken) > BROKEN_SHOWN:
        st.caption(
            f"… and {len(broken) - BROKEN_SHOWN:,} more broken run folders (`python -m vae list`)."
        )
    record = pick_run(records, key="run", label="Run")
    if record is not None:
        files = [
            (n, store.path(record.run_id, n))
            for n in ("final.pt", "model.pt", "metrics.jsonl", "eval.json")
        ]
        present = [(n, p.stat().st_size) for n, p in files if p.exists()]
        st.caption(
            "Files: " + (", ".join(f"{n} ({s / 1024:,.0f} KiB)" for n, s in present) or "none yet")
        )
        problem = checkpoint_problem(store, record.run_id)
        if problem:
            st.error(f"Checkpoint unusable: {plain_text(problem, 300)}")
        evaluation = store.read_eval(record.run_id)
        if evaluation:
            row = st.container(horizontal=True)  # wraps instead of truncating
            shown = [("elbo", "ELBO"), ("iwae", "IWAE log p(x) ≥"), ("rate", "R"),
                     ("distortion", "D"), ("active_units", "active units"),
                     ("mutual_info", "I_q(x;z)"), ("marginal_kl", "KL(q(z)‖p(z))"),
                     ("mig", "MIG")]  # fmt: skip
            for key, label in shown:
                if evaluation.get(key) is not None:
                    row.metric(
                        label,
                        f"{evaluation[key]:.2f}" if key != "active_units" else evaluation[key],
                    )
            st.caption(
                f"test split, {evaluation.get('n_test')} images, IWAE with k = {evaluation.get('iw_samples')}"
                + (f"; I_q ≤ ln N = {evaluation['log_n']:.2f}" if evaluation.get("log_n") else "")
                + ("; " + MIG_NOTE if evaluation.get("mig") is not None else "")
            )
        downloads = st.container(horizontal=True)  # full labels in a narrow window
        for name in ("final.pt", "model.pt"):
            path = store.path(record.run_id, name)
            if path.exists() and not (problem and problem.startswith(name)):
                downloads.download_button(
                    f"Download {name}", path.read_bytes, file_name=f"{record.run_id}-{name}",
                    mime="application/octet-stream", key=f"download-{name}",
                )  # fmt: skip
        if record.last_metrics:
            downloads.download_button(
                "Download metrics.csv",
                lambda: metrics_csv(store.read_metrics(record.run_id), record.run_id, record.config),
                file_name=f"{record.run_id}-metrics.csv",
                mime="text/csv", key="download-csv",
            )  # fmt: skip
        if not problem and store.checkpoint_path(record.run_id) is not None:
            downloads.download_button(
                "Download for torch alone (.pt2)",
                lambda: export_zip(load_run_checkpoint(store, record.run_id), record.run_id),
                file_name=f"{record.run_id}-torch-export.zip", mime="application/zip",
                key="download-export", on_click="ignore",
                help="Encoder and decoder as torch.export files: `torch.export.load(path)"
                ".module()` runs them with nothing but torch installed (see the README).",
            )  # fmt: skip
        if (store.run_dir(record.run_id) / FILM_FILE).exists():
            downloads.download_button(
                "Training film (GIF)", lambda: run_gif(record), file_name=f"{record.run_id}-film.gif",
                mime="image/gif", key="download-film", on_click="ignore",
                help="One frame per kept epoch: prior samples (the same z every epoch) and the "
                "same test digits beside their reconstructions.",
            )  # fmt: skip
        st.code(
            "import torch\n"
            "from vae.execution.checkpoint import model_from_checkpoint\n"
            f"ckpt = torch.load('{record.run_id}-final.pt', weights_only=True)\n"
            "model = model_from_checkpoint(ckpt)",
            language="python",
        )
        with st.popover("Delete this run…"):
            st.write(f"Delete run {record.run_id} and all its files? This cannot be undone.")
            st.button(
                "Yes, delete it", type="primary", key="confirm-delete",
                on_click=delete_run, args=(record.run_id, neighbour(records, record.run_id)),
            )  # fmt: skip

st.divider()
st.subheader("Inspect a checkpoint file")
st.caption(
    f"Opened with `torch.load(weights_only=True)`: no code in the file is run. Files over "
    f"{MAX_UPLOAD_BYTES // 2**20} MiB, or whose weights do not match their config, are refused."
)
if st.file_uploader("Checkpoint (.pt)", type=["pt", "pth", "ckpt"], key="upload") is not None:
    too_big = take_upload("upload", MAX_UPLOAD_BYTES)  # reruns, unless refused
    if too_big:
        st.error(f"Refused: {too_big}")
inspection = inspect_pending_upload(MAX_UPLOAD_BYTES)
if inspection is not None:
    st.caption(f"Inspected: {code_span(inspection.name)} (the file itself is not kept)")
    st.button("Clear", key="forget-upload", on_click=forget_upload)
    if inspection.problem:
        st.error(f"Refused: {refusal_text(inspection.problem)}")
    else:
        st.success(f"Valid checkpoint: epoch {inspection.epoch}, step {inspection.step}")
        st.json(inspection.config)
        if inspection.metrics:
            st.dataframe([inspection.metrics], hide_index=True)
        if inspection.samples is not None:
            st.image(inspection.samples, caption="samples from its prior", width=420)
        else:
            st.warning(inspection.samples_problem)

refresh_on_change()  # the table follows runs as they train and finish
