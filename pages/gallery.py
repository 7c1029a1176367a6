"""β gallery: one row per β of a sweep, what the model generates and keeps at each β."""

import streamlit as st

from ui import (
    chart,
    figure_downloads,
    list_runs,
    pick_sweep,
    refresh_on_change,
    run_store,
    sweep_of_address_run,
)
from vae.execution.checkpoint import CheckpointError
from vae.execution.film import FILM_FILE
from vae.execution.states import RunState
from vae.learn.data import DataError
from vae.present.charts import units_chart
from vae.present.film_view import frame_pictures, read_films, sweep_gif
from vae.present.gallery import (
    Pictures,
    Sweep,
    gallery_frame,
    run_pictures,
    shown_rows,
    sweep_figure_svg,
    sweeps,
    unit_ranges,
)
from vae.present.text import plain_text
from vae.present.units import ACTIVE_RULE, INFORMATIVE_RULE, WHY_COUNTS_DIFFER

st.title("β gallery")
st.caption(
    "One sweep, one row per β, smallest first: samples from the prior, the same test digits "
    "beside their reconstructions, and the dimension with the largest KL swept from −3 to 3. "
    "As β grows the reconstructions blur, the samples converge on a generic digit and fewer "
    f"dimensions stay **informative** ({INFORMATIVE_RULE}); **active** counts Burda's "
    f"{ACTIVE_RULE}. {WHY_COUNTS_DIFFER}"
)
store = run_store()


@st.cache_data(max_entries=256, show_spinner=False)
def pictures(run_id: str, path: str, modified: float, seed: int) -> Pictures:
    """A run's images, recomputed only when its checkpoint file changes (path, mtime in the key)."""
    return run_pictures(store, run_id, seed=seed)


@st.cache_data(max_entries=64, show_spinner=False)
def films_of(folders: dict[str, str], modified: tuple) -> dict:
    """The sweep's films, re-read only when a film file changes (mtimes in the key)."""
    return read_films(folders)


def film_mtime(record) -> float:
    path = record.path / FILM_FILE
    return path.stat().st_mtime if path.exists() else 0.0


records = list_runs()
found = sweeps(records)
sweep_of_address_run({s.group: [r.run_id for r in s.runs] for s in found})
group = pick_sweep([(s.group, s.label()) for s in found], widget_key="gallery_sweep")
if group is None:
    st.info(
        "No β sweep yet. On the Train page, press **Start the β demo** (on an empty store) or "
        "**Sweep β**; each run of the sweep gets a row here."
    )
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()  # a sweep started anywhere (app or CLI) shows up
    st.stop()
sweep = next(s for s in found if s.group == group)
seed = st.number_input("Sample seed (the same for every row)", 0, 2**31 - 1, 0, key="gallery_seed")


def gallery_svg() -> str:
    """The sweep as it is when the button is pressed, as one labelled figure."""
    now = next((s for s in sweeps(store.list_runs()) if s.group == group), sweep)
    return sweep_figure_svg(now, store, int(seed))


def gallery_gif() -> bytes:
    now = next((s for s in sweeps(store.list_runs()) if s.group == group), sweep)
    return sweep_gif(now)


films = films_of(
    {r.run_id: str(r.path) for r in sweep.runs}, tuple(film_mtime(r) for r in sweep.runs)
)
last_epoch = max(r.config.epochs for r in sweep.runs)
tools = st.container(horizontal=True)
with tools:
    figure_downloads(gallery_svg, f"beta-gallery-{group}", label="The gallery as one figure")
    if films:
        st.download_button(
            "Training film (GIF)", gallery_gif, file_name=f"{group}-film.gif", mime="image/gif",
            key="gallery_gif", on_click="ignore", icon=":material/movie:",
            help="One frame per kept epoch, one row per β: prior samples (the same z every "
            "epoch) and the same test digits beside their reconstructions.",
        )  # fmt: skip
film_epoch = last_epoch
if films and last_epoch > 1:
    film_epoch = st.slider(
        "Epoch (moves every row; the last epoch shows the latest pictures)", 1, last_epoch,
        last_epoch, key="gallery_epoch",
        help="Each run keeps a small frame per epoch (about 100 evenly spaced epochs on long "
        "runs); a row shows its latest frame at or before the chosen epoch.",
    )  # fmt: skip


def row(index: int, record, numbers, replicated: bool = False) -> None:
    with st.container(key=f"gallery_row_{index}", border=True):
        text, samples, recon, traversal = st.columns([1.3, 1.2, 1.2, 2.6])
        epoch = f"epoch {numbers.epoch}/{numbers.epochs}" if numbers.epoch else numbers.state
        replicate = f" · seed {numbers.seed}" if replicated else ""
        text.markdown(f"#### β = {numbers.beta:g}{replicate}")
        if numbers.rate is None:
            text.caption(f"{record.run_id} · {numbers.state}")
            return
        text.markdown(
            f"R = {numbers.rate:.2f} nats  \nD = {numbers.distortion:.1f} nats  \n"
            f"informative: **{numbers.informative}** / {numbers.latent_dim}  \n"
            f"active (Burda): **{numbers.active}** / {numbers.latent_dim}"
        )
        text.caption(f"{epoch} · {numbers.state}")
        if film_epoch < (numbers.epoch or 0):
            if record.run_id in films:
                film_row(films[record.run_id], samples, recon, traversal)
                return
            text.caption(  # its latest pictures follow, each captioned with their epoch
                f"No film of this run (its {FILM_FILE} is missing or unreadable): its pictures "
                f"are of its latest epoch, not of epoch {film_epoch}."
            )
        path = store.checkpoint_path(record.run_id)
        if path is None:
            samples.caption("no checkpoint yet")
            return
        try:
            shown = pictures(record.run_id, str(path), path.stat().st_mtime, int(seed))
        except (CheckpointError, DataError, OSError) as exc:
            samples.warning(f"Cannot draw this run: {plain_text(exc, 300)}")
            return
        at = f" · epoch {shown.epoch}"  # every picture says which epoch it shows
        samples.image(shown.samples, caption=f"prior samples{at}", width="stretch")
        recon.image(shown.reconstructions, caption=f"inputs | reconstructions{at}", width="stretch")
        traversal.image(
            shown.traversal,
            caption=f"z{shown.traversal_dim} (largest KL) from −3 to 3{at}",
            width="stretch",
        )


def film_row(film, samples, recon, traversal) -> None:
    shown = frame_pictures(film, film_epoch)
    if shown is None:
        samples.caption(f"no frame at or before epoch {film_epoch}")
        return
    sample_grid, recon_grid, epoch = shown
    samples.image(sample_grid, caption=f"prior samples · epoch {epoch}", width="stretch")
    recon.image(recon_grid, caption=f"inputs | reconstructions · epoch {epoch}", width="stretch")
    traversal.caption("Traversals are drawn for the latest epoch only.")


def gallery() -> None:
    """The rows; the page reruns when a run of the store changes (refresh_on_change), and
    pictures come from the cache between epochs, so a row keeps its pictures meanwhile."""
    frame = gallery_frame(sweep)
    finished = sum(r.state == RunState.FINISHED for r in sweep.runs)
    if finished < len(sweep.runs):
        st.info(f"{finished} of {len(sweep.runs)} runs finished; rows update as the runs train.")
    if frame["informative"].notna().sum() >= 2:
        chart(units_chart, frame, figure=f"units-{group}")
    replicated = sweep.seeds > 1
    if replicated:
        st.caption(
            f"{sweep.seeds} seeds per β: the chart draws each β's mean count with a bar over its "
            "range; the rows below show every seed."
        )
        ranges = unit_ranges(frame).rename(columns={"beta": "β"})
        st.dataframe(ranges, hide_index=True, key="unit_ranges")
    runs, note = shown_rows(sweep)
    if note:
        st.caption(note)
    numbers = {n.run_id: n for n in gallery_frame(Sweep(sweep.group, runs)).itertuples()}
    for index, record in enumerate(runs):
        row(index, record, numbers[record.run_id], replicated)


gallery()
refresh_on_change()  # new sweeps anywhere, and every run's progress (the picker's labels)
