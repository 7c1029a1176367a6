"""Probe: your own digit through every β of a sweep, paths between inputs, decoded latent points."""

import pandas as pd
import streamlit as st
import torch

from ui import (
    altair_chart,
    list_runs,
    pick_sweep,
    refresh_on_change,
    run_store,
    sweep_of_address_run,
)
from vae.execution.checkpoint import CheckpointError, load_run_checkpoint, model_from_checkpoint
from vae.learn.data import DataError, load_dataset
from vae.learn.evaluate import grid, posterior_means
from vae.learn.objective import kl_per_dim
from vae.present.gallery import sweeps
from vae.present.probe import (
    MAX_UPLOAD_BYTES,
    ProbeInputError,
    decode_point,
    grey_from_canvas,
    grey_from_upload,
    grid_points,
    interpolation,
    manifold_grid,
    map_dims,
    model_input,
    preparation_text,
    prepare,
    probe,
    probes_frame,
    to_picture,
)
from vae.present.probe_charts import PICK, clickable_map_chart, probe_kl_chart
from vae.present.text import plain_text

CANVAS_SIDE = 196  # 7 canvas pixels per image pixel
MAP_POINTS = 1000
ZOOM = 4

st.title("Probe a sweep")
st.caption(
    "Put your own input through every run of a sweep (runs that differ only in β): draw a digit, "
    "upload an image or pick a test digit. Each β's encoder gives μⱼ and σⱼ² per dimension; "
    "KLⱼ = ½(μⱼ² + σⱼ² − ln σⱼ² − 1) nats is what that dimension costs, and their sum is this "
    "input's rate. Larger β: fewer dimensions pay, and the reconstruction keeps less of the input."
)
store = run_store()
found = sweeps(list_runs())
if not found:
    st.info("No β sweep yet. On the Train page, press **Start the β demo** or **Sweep β**.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()
    st.stop()
sweep_of_address_run({s.group: [r.run_id for r in s.runs] for s in found})
group = pick_sweep([(s.group, s.label()) for s in found])
sweep = next(s for s in found if s.group == group)
first = sweep.runs[0].config


@st.cache_resource(max_entries=16)
def load_model(run_id: str, modified: float):
    """The run's model, reloaded when its checkpoint file changes (modified time in the key)."""
    return model_from_checkpoint(load_run_checkpoint(store, run_id))


def checkpoint_mtime(run_id: str) -> float | None:
    path = store.checkpoint_path(run_id)
    return path.stat().st_mtime if path else None


models = []
for record in sweep.runs:
    modified = checkpoint_mtime(record.run_id)
    if modified is None:
        continue
    try:
        models.append((record, load_model(record.run_id, modified)))
    except CheckpointError as exc:
        st.warning(
            f"β = {record.config.beta:g} ({record.run_id}) cannot be used: {plain_text(exc)}"
        )
try:
    dataset = load_dataset(first.dataset, first.data_root)
except DataError as exc:
    st.error(f"Cannot load the sweep's data set: {plain_text(exc)}")
    st.stop()
if not models:
    st.info("No run of this sweep has a checkpoint yet: the first epoch is still training.")
    refresh_on_change([r.run_id for r in sweep.runs])
    st.stop()
shape = dataset.info.image_shape
test_x = dataset.test.x

source = st.radio(
    "Input", ["Draw", "Upload", "Test digit"], horizontal=True, key="probe_source",
    help="A drawing or an upload is prepared the way the data set's images were (see below).",
)  # fmt: skip


def read_input() -> torch.Tensor:
    """The chosen input as one image [1, C, H, W] in [0, 1]; ProbeInputError says what's missing."""
    if source == "Test digit":
        index = st.number_input("Test image", 0, len(test_x) - 1, 0, key="probe_test_index")
        return test_x[int(index) : int(index) + 1].clone()
    if source == "Upload":
        upload = st.file_uploader(
            f"An image (PNG, JPEG, GIF, BMP, WebP, TIFF; at most {MAX_UPLOAD_BYTES // 2**20} MiB)",
            type=["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"], key="probe_upload",
        )  # fmt: skip
        if upload is None:
            raise ProbeInputError("upload an image of a digit (dark on light or light on dark)")
        if upload.size > MAX_UPLOAD_BYTES:  # before the bytes are read
            raise ProbeInputError(
                f"the file is {upload.size:,} bytes; the limit is {MAX_UPLOAD_BYTES:,}"
            )
        return prepare(grey_from_upload(upload.getvalue()), shape, first.dataset)
    from streamlit_drawable_canvas import st_canvas  # a component: imports under a Streamlit run

    drawn = st_canvas(
        stroke_width=16, stroke_color="#FFFFFF", background_color="#000000",
        height=CANVAS_SIDE, width=CANVAS_SIDE, drawing_mode="freedraw",
        return_image_data=True, key="probe_canvas",
    )  # fmt: skip
    st.caption("Draw with the mouse (or a finger); the canvas's bin icon clears it.")
    return prepare(grey_from_canvas(drawn.image_data), shape, first.dataset)


left, right = st.columns([1, 2])
try:
    with left:
        x = read_input()
except ProbeInputError as exc:
    right.info(str(exc).capitalize())
    refresh_on_change([r.run_id for r in sweep.runs])
    st.stop()
x_in = model_input(x, first.likelihood)
right.image(
    to_picture(torch.cat([x, x_in]), zoom=ZOOM), caption="prepared | as the encoder sees it"
)
right.caption("How the input is prepared: " + preparation_text(first.dataset, first.likelihood))

probes = [probe(m, x_in, r.run_id, r.config.beta) for r, m in models]
st.subheader("One reconstruction per β")
with st.container(horizontal=True, key="probe_reconstructions"):
    for p in probes:
        st.image(
            to_picture(p.reconstruction, zoom=4),
            caption=f"β = {p.beta:g} · R = {p.rate:.1f} nats",
            width=128,
        )
altair_chart(probe_kl_chart(probes_frame(probes)), f"probe-kl-{group}")
with st.expander("μⱼ, σⱼ² and KLⱼ of every dimension at every β"):
    table = probes_frame(probes).pivot(index="dim", columns="beta", values=["mu", "var", "kl"])
    table.columns = [f"{name} (β = {beta:g})" for name, beta in table.columns]
    st.dataframe(table.round(3), key="probe_table")
    st.caption(
        "Rate of this input (Σⱼ KLⱼ): "
        + ", ".join(f"β = {p.beta:g}: {p.rate:.2f} nats" for p in probes)
    )

st.subheader("Between two inputs")
other = st.number_input(
    "…and test image", 0, len(test_x) - 1, 1, key="probe_other",
    help="Each row decodes the straight line between the two inputs' posterior means μ.",
)  # fmt: skip
x_other = model_input(test_x[int(other) : int(other) + 1].clone(), first.likelihood)
for record, model in models:
    path = interpolation(model, x_in, x_other)
    st.image(
        to_picture(path, zoom=2), caption=f"β = {record.config.beta:g}: μ(input) → μ(test image)"
    )

st.subheader("Decode a point of the latent plane")
by_id = {r.run_id: (r, m) for r, m in models}
chosen = st.selectbox(
    "Run", list(by_id), key="probe_map_run",
    format_func=lambda rid: f"β = {by_id[rid][0].config.beta:g} · {rid}",
)  # fmt: skip
record, model = by_id[chosen]
mu, logvar = posterior_means(model, model_input(test_x[:MAP_POINTS], first.likelihood))
kl = kl_per_dim(mu.double(), logvar.double()).mean(0).tolist()
dims = map_dims(kl, model.latent_dim)
if model.latent_dim == 2:
    st.image(
        grid(manifold_grid(model, dims), nrow=15, padding=0),
        caption="The whole decoded plane (J = 2): z at the prior's quantiles, as in Kingma & "
        "Welling's figure; z1 to the right, z2 upwards",
        width=420,
    )
if len(dims) == 2:
    points = pd.DataFrame(
        {
            "z1": mu[:, dims[0]].numpy(),
            "z2": mu[:, dims[1]].numpy(),
            "label": dataset.test.y[:MAP_POINTS].numpy(),
        }
    )
    titles = [f"μ of z{dims[0]}", f"μ of z{dims[1]}"]
    others = "" if model.latent_dim == 2 else " (the two with the largest KL; the others at 0)"
    st.caption(f"Click anywhere on the map to decode that point{others}.")
    map_col, image_col = st.columns([3, 1])
    with map_col:
        event = altair_chart(
            clickable_map_chart(points, grid_points(), titles, (-3.2, 3.2)),
            f"probe-map-{chosen}", on_select="rerun", key="probe_map",
        )  # fmt: skip
    picked = (event.selection.get(PICK) or [None])[0] if event else None
    if picked:
        point = (float(picked["z1"]), float(picked["z2"]))
        image = decode_point(model, dims, point)
        image_col.image(
            to_picture(image, zoom=5),
            caption=f"z{dims[0]} = {point[0]:.2f}, z{dims[1]} = {point[1]:.2f}",
        )
    else:
        image_col.caption("No point picked yet.")
else:
    st.caption("A run with one latent dimension has no plane to click.")

refresh_on_change([r.run_id for r in sweep.runs])
