"""Checkpoints: every run with its files; download a checkpoint or metrics; inspect an upload."""

import streamlit as st

from ui import job_manager, list_runs, pick_run, refresh_on_change
from vae.execution.checkpoint import (
    MAX_UPLOAD_BYTES,
    CheckpointError,
    checkpoint_problem,
    model_from_checkpoint,
    read_checkpoint,
)
from vae.execution.store import StoreError
from vae.learn.evaluate import MIG_NOTE, grid, prior_samples
from vae.present.views import metrics_csv, newest, runs_frame

st.title("Checkpoints")
st.caption(
    "Every run in the store with its files. **final.pt** is the trained model to share (weights, "
    "config, last metrics); **model.pt** is the latest epoch with the optimizer state, used to "
    "resume. Both open with `torch.load(weights_only=True)`."
)
manager = job_manager()
store = manager.store
records = list_runs()

if not records:
    st.info("No runs yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
else:
    listed, note = newest(records)
    if note:
        st.caption(note)
    st.dataframe(runs_frame(listed), hide_index=True)
    broken = [r for r in records if r.broken]
    for r in broken:
        st.warning(f"Run folder {r.run_id} is broken: {r.broken}")
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
            st.error(f"Checkpoint unusable: {problem}")
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
        if record.metrics:
            downloads.download_button(
                "Download metrics.csv", lambda: metrics_csv(store.read_metrics(record.run_id)),
                file_name=f"{record.run_id}-metrics.csv",
                mime="text/csv", key="download-csv",
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
            if st.button("Yes, delete it", type="primary", key="confirm-delete"):
                try:
                    manager.delete(record.run_id)
                    st.success(f"Deleted {record.run_id}")
                    st.rerun()
                except StoreError as exc:
                    st.error(str(exc))

st.divider()
st.subheader("Inspect a checkpoint file")
st.caption(
    f"Opened with `torch.load(weights_only=True)`: no code in the file is run. Files over "
    f"{MAX_UPLOAD_BYTES // 2**20} MiB, or whose weights do not match their config, are refused."
)
upload = st.file_uploader("Checkpoint (.pt)", type=["pt", "pth", "ckpt"], key="upload")
if upload is not None:
    try:
        if upload.size > MAX_UPLOAD_BYTES:
            raise CheckpointError(
                f"file is {upload.size:,} bytes; the limit is {MAX_UPLOAD_BYTES:,}"
            )
        checkpoint = read_checkpoint(upload.getvalue(), max_bytes=MAX_UPLOAD_BYTES)
    except CheckpointError as exc:
        st.error(f"Refused: {exc}")
    else:
        st.success(f"Valid checkpoint: epoch {checkpoint['epoch']}, step {checkpoint['step']}")
        st.json(checkpoint["config"])
        metrics = {k: v for k, v in checkpoint["metrics"].items() if not isinstance(v, list)}
        if metrics:
            st.dataframe([metrics], hide_index=True)
        st.image(
            grid(prior_samples(model_from_checkpoint(checkpoint), 32), nrow=8),
            caption="samples from its prior",
            width=420,
        )

refresh_on_change()  # the table follows runs as they train and finish
