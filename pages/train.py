"""Train: choose β and the rest of the settings, start a run or a β sweep, watch the queue."""

import streamlit as st

from ui import (
    job_manager,
    lazy_expander,
    list_runs,
    live_fragment,
    refresh_on_change,
    run_label,
)
from vae.execution.jobs import MAX_SEEDS
from vae.execution.preflight import fetch_data, refusal, run_findings, sweep_findings
from vae.execution.states import ACTIVE, RESUMABLE, RunState
from vae.execution.store import StoreError
from vae.learn.config import (
    LIMITS,
    RunConfig,
    parse_number,
    parse_number_list,
    sweep_betas,
    validation_errors,
)
from vae.learn.datasets import DATASETS, DEFAULT_DATASET
from vae.learn.fields import ARCHITECTURES, DEVICES, LIKELIHOODS, OBJECTIVES, PRECISIONS, SETTINGS
from vae.present.demo import (
    DEMO_GUIDE,
    LINEAR_DEMO_GUIDE,
    DemoSettingError,
    start_demo,
    start_linear_demo,
)
from vae.present.text import code_span, plain_text
from vae.present.views import (
    active_jobs,
    grouping_text,
    job_speed,
    newest,
    progress,
    runs_frame,
    slots_text,
)

BETA_STEPS = [0.0, 0.01, 0.03, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]
LR_STEPS = [1e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 1e-2]
BATCH_SIZES = [32, 64, 128, 256, 512, 1024]
HIDDEN_SIZES = [64, 128, 256, 400, 512, 1024]
DEFAULTS = RunConfig()


def label(name: str) -> str:
    """A control's label from the setting's declaration (with its unit)."""
    s = SETTINGS[name]
    return f"{s.label} ({s.unit})" if s.unit else s.label


def key(name: str) -> str:
    """Every setting's control has this key (the every-setting test finds them by it)."""
    return f"setting_{name}"


CANCEL_HELP = (
    "Stops this run only, at its last completed epoch (kept: Resume continues from it). "
    "Other runs of its sweep, even those trained in the same process, train on."
)

REASON_CHARS = 90  # of a run's end reason in the job list: one line at 800 px
CANCEL_WAIT_S = 1.5  # a Cancel waits this long for the worker to stop, so the row shows it

manager = job_manager()
st.title("Train β-VAEs")
st.caption(
    "Pick β and the model, then **Train** one run or **Sweep β** over a list. Runs train in "
    "background processes; this page, the charts and the other tabs stay usable meanwhile."
)

# ---- first visit: an empty store offers the demonstration sweep ------------------------------
if not manager.store.list_runs():
    with st.container(border=True, key="welcome"):
        st.subheader("New here? Start with the β demo")
        st.markdown(DEMO_GUIDE)
        if st.button("Start the β demo", type="primary", key="demo_button"):
            try:
                run_ids = start_demo(manager)
                st.success(
                    f"Queued the demo: {len(run_ids)} runs. Progress is in **Jobs** at the "
                    "bottom of this page; the gallery fills in as they train."
                )
                st.page_link(
                    "pages/gallery.py", label="Open the β gallery", icon=":material/view_list:"
                )
            except (ValueError, StoreError, DemoSettingError) as exc:
                st.error(f"Nothing was started: {plain_text(exc)}")

with st.expander("Linear demo: runs that land on a curve predicted in closed form"):
    st.markdown(LINEAR_DEMO_GUIDE)
    if st.button("Start the linear demo", key="linear_demo_button"):
        try:
            linear_ids = start_linear_demo(manager)
            st.success(f"Queued the linear demo: {len(linear_ids)} runs (seconds each).")
            st.page_link("pages/tradeoff.py", label="Open Tradeoff", icon=":material/show_chart:")
        except (ValueError, StoreError, DemoSettingError) as exc:
            st.error(f"Nothing was started: {plain_text(exc)}")


def query_default(name: str, cast, fallback, bounds: tuple[float, float] | None = None):
    """A prefill from the URL (?beta=4&latent_dim=10), within the widget's own range.

    Junk, a fraction for a whole number, or a value outside the setting's limits is reported and
    ignored; a legal value beyond this widget's range (latent_dim=100 on a slider that stops at
    64) is clamped to the widget's end, with a message saying so.
    """
    raw = st.query_params.get(name)
    if raw is None:
        return fallback
    try:
        if cast is str:
            return raw
        try:
            number = parse_number(raw)
        except ValueError as exc:  # its own message would quote the whole value
            raise ValueError(
                "not a finite number" if "finite" in str(exc) else "not a number"
            ) from None
        if cast is int and number != int(number):
            raise ValueError("must be a whole number")
        value = cast(number)
        limit_low, limit_high = LIMITS.get(name, (None, None))
        if limit_low is not None and not limit_low <= value <= limit_high:
            raise ValueError(f"must be between {limit_low:g} and {limit_high:g}")
    except ValueError as exc:
        st.warning(f"Ignored `{name}` in the address ({code_span(raw)}): {plain_text(exc)}.")
        return fallback
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        clamped = cast(min(max(value, bounds[0]), bounds[1]))
        st.warning(
            f"`{name}={value:g}` in the address is outside this control's range "
            f"({bounds[0]:g} to {bounds[1]:g}); using {clamped:g}."
        )
        return clamped
    return value


errors_at: dict[str, st.delta_generator.DeltaGenerator] = {}
left, middle, right = st.columns(3, gap="large")

with left:
    st.subheader("Data and model")
    names = list(DATASETS)
    wanted = query_default("dataset", str, DEFAULT_DATASET)
    if wanted not in names:
        st.warning("Ignored `dataset` in the address: unknown data set.")
        wanted = DEFAULT_DATASET
    dataset = st.selectbox(
        label("dataset"), names, index=names.index(wanted), key=key("dataset"),
        format_func=lambda n: DATASETS[n].title,
    )  # fmt: skip
    st.caption(DATASETS[dataset].description)
    data_root = None
    if DATASETS[dataset].needs_root:
        data_root = st.text_input(
            label("data_root"), value="data", help=SETTINGS["data_root"].help,
            key=key("data_root"),
        )  # fmt: skip
    errors_at["dataset"] = st.empty()
    architecture = st.radio(
        label("architecture"), list(ARCHITECTURES), horizontal=True, key=key("architecture")
    )
    hidden = st.select_slider(
        label("hidden_dims"), HIDDEN_SIZES, value=400 if architecture == "mlp" else 256,
        help=SETTINGS["hidden_dims"].help + " (linear: no hidden layer)", key=key("hidden_dims"),
        disabled=architecture == "linear",
    )  # fmt: skip
    latent_dim = st.slider(
        label("latent_dim"), 1, 64,
        query_default("latent_dim", int, DEFAULTS.latent_dim, (1, 64)), key=key("latent_dim"),
    )  # fmt: skip
    errors_at["latent_dim"] = st.empty()
    likelihood = st.radio(
        label("likelihood") + " p(x|z)", list(LIKELIHOODS), horizontal=True,
        key=key("likelihood"),
        help="Bernoulli on binarised pixels, or a Gaussian with its normaliser: both give D in nats.",
    )  # fmt: skip
    # The likelihood's own settings (fields.LIKELIHOODS): shown only where they apply.
    likelihood_extra = {}
    for name in LIKELIHOODS[likelihood]:
        setting = SETTINGS[name]
        if setting.kind is bool:
            likelihood_extra[name] = st.checkbox(
                label(name), value=getattr(DEFAULTS, name), help=setting.help, key=key(name)
            )
        else:
            likelihood_extra[name] = st.number_input(
                label(name), setting.low, setting.high, getattr(DEFAULTS, name), format="%.3f",
                help=setting.help, key=key(name),
            )  # fmt: skip

with middle:
    st.subheader("Objective")
    objective = st.selectbox(
        label("objective"), list(OBJECTIVES), key=key("objective"),
        format_func=lambda o: f"{OBJECTIVES[o].title}: {OBJECTIVES[o].formula}",
    )  # fmt: skip
    uses_beta = OBJECTIVES[objective].uses_beta
    beta_default = query_default("beta", float, DEFAULTS.beta)
    beta_slider = st.select_slider(
        "β (log scale)",
        BETA_STEPS,
        value=min(BETA_STEPS, key=lambda b: abs(b - beta_default)),
        disabled=not uses_beta, key=key("beta"), help=SETTINGS["beta"].help
        + ("" if uses_beta else f" ({OBJECTIVES[objective].title} ignores β)"),
    )  # fmt: skip
    beta_text = st.text_input(
        "Exact β (overrides the slider)",
        value="" if beta_default in BETA_STEPS else f"{beta_default:g}",
        disabled=not uses_beta,
    )
    beta = beta_slider
    if beta_text.strip():
        try:
            beta = parse_number(beta_text)
        except ValueError as exc:
            beta = float("nan")
            st.error(f"β: {plain_text(exc)}")
    errors_at["beta"] = st.empty()
    # The objective's own settings (fields.OBJECTIVES): a new objective's controls come from there.
    extra = {}
    for name in OBJECTIVES[objective].settings:
        setting = SETTINGS[name]
        cast = setting.kind
        extra[name] = st.number_input(
            label(name), cast(setting.low), cast(setting.high), getattr(DEFAULTS, name),
            help=setting.help, key=key(name),
        )  # fmt: skip
        errors_at[name] = st.empty()
    sweep_text = st.text_input("β values for a sweep", "0.25, 0.5, 1, 2, 4, 8")
    seeds = st.number_input(
        "Seeds per β", 1, MAX_SEEDS, 1, key="sweep_seeds",
        help="Replicates: each β trains with seeds Seed, Seed + 1, ...; the Tradeoff page draws "
        "their mean with error bars.",
    )  # fmt: skip
    sweep_error = st.empty()

with right:
    st.subheader("Training")
    epochs = st.slider(
        label("epochs"), 1, 200, query_default("epochs", int, DEFAULTS.epochs, (1, 200)),
        key=key("epochs"),
    )  # fmt: skip
    errors_at["epochs"] = st.empty()
    batch_size = st.select_slider(
        label("batch_size"), BATCH_SIZES, value=DEFAULTS.batch_size, key=key("batch_size")
    )
    lr = st.select_slider(
        label("lr"), LR_STEPS, value=DEFAULTS.lr, format_func=lambda v: f"{v:g}", key=key("lr"),
        help=SETTINGS["lr"].help,
    )  # fmt: skip
    seed = st.number_input(
        label("seed"), 0, 2**31 - 1, DEFAULTS.seed, key=key("seed"), help=SETTINGS["seed"].help
    )
    name = st.text_input(label("name") + " (optional)", max_chars=200, key=key("name"))
    with st.expander("How it runs (same numbers, other speed)"):
        threads = st.number_input(
            label("threads"), 0, 256, DEFAULTS.threads, key=key("threads"),
            help=SETTINGS["threads"].help,
        )  # fmt: skip
        device = st.selectbox(
            label("device"), list(DEVICES), key=key("device"), help=SETTINGS["device"].help
        )
        precision = st.selectbox(
            label("precision"), list(PRECISIONS), key=key("precision"),
            help=SETTINGS["precision"].help,
        )  # fmt: skip

config = RunConfig(
    dataset=dataset, data_root=data_root, architecture=architecture, hidden_dims=[hidden],
    latent_dim=latent_dim, likelihood=likelihood, objective=objective, beta=beta, epochs=epochs,
    batch_size=batch_size, lr=lr, seed=int(seed), name=name, threads=int(threads),
    device=device, precision=precision, **likelihood_extra, **extra,
)  # fmt: skip
errors = validation_errors(config)
for field, message in errors.items():
    errors_at.get(field, st).error(f"{field}: {message}")

betas, sweep_problem = [], None
try:
    betas = sweep_betas(parse_number_list(sweep_text))  # range and repeats: the CLI checks the same
except ValueError as exc:
    sweep_problem = str(exc)
    sweep_error.error(f"Sweep: {plain_text(sweep_problem)}")

st.caption(f"Will train: {config.describe()}, {epochs} epochs, batch {batch_size}, lr {lr:g}")


def show_findings(found, where) -> None:
    """Short messages (one line at 800 px), the numbers behind them in an expander."""
    for finding in found:
        (where.error if finding.refuse else where.warning)(finding.message)
    if any(f.detail for f in found):
        with where.expander("Details"):
            for finding in found:
                st.text(finding.detail)


run_found = run_findings(config) if not errors else []
sweep_found = sweep_findings(config) if not errors else []
show_findings(sweep_found, st.container(key="findings"))
missing_data = any(f.setting == "data_root" for f in sweep_found)
# The label is fixed text: the data root is the user's, shown by the message above as text.
if missing_data and st.button("Download the files into the data root", key="download_data"):
    try:
        with st.spinner("Downloading (torchvision)…"):
            fetch_data(config)
        st.rerun()  # the files are there: the refusal goes
    except ValueError as exc:  # DataError: no connection, or a damaged download
        st.error(f"Download failed: {plain_text(exc, 200)}")
buttons = st.container(horizontal=True)  # buttons keep their full labels in a narrow window
train_disabled = bool(errors) or refusal(run_found) is not None
if buttons.button("Train", type="primary", key="train_button", disabled=train_disabled):
    try:
        if refused := [f.message for f in run_findings(config) if f.refuse]:  # again at the click
            raise ValueError(" ".join(refused))  # messages only: details name the user's paths
        run_id = manager.submit(config.validated())
        st.success(f"Queued run {run_id}")
    except (ValueError, StoreError) as exc:
        st.error(f"Nothing was started: {plain_text(exc)}")
sweep_disabled = bool(errors) or bool(sweep_problem) or refusal(sweep_found) is not None
count = len(betas) * int(seeds)
if buttons.button(f"Sweep β ({count} runs)", key="sweep_button", disabled=sweep_disabled):
    try:
        if refused := [f.message for f in sweep_findings(config) if f.refuse]:
            raise ValueError(" ".join(refused))
        run_ids = manager.submit_sweep(config.validated(), betas, seeds=int(seeds))
        grouping = grouping_text(manager.jobs, run_ids, manager.slots())
        replicas = f" × {int(seeds)} seeds" if seeds > 1 else ""
        st.success(f"Queued β = {', '.join(f'{b:g}' for b in betas)}{replicas}: {grouping}")
    except (ValueError, StoreError) as exc:
        st.error(f"Nothing was started: {plain_text(exc)}")


ACTION_ERROR = "_train_action_error"  # session state: why the last Cancel or Resume failed


def _act(action, run_id: str) -> None:
    """A Cancel or Resume callback: it runs before the panel redraws, so the panel shows the
    run's new state at once instead of at the next refresh."""
    try:
        action(run_id)
    except StoreError as exc:
        st.session_state[ACTION_ERROR] = str(exc)


def _cancel(run_id: str) -> None:
    manager.cancel(run_id, wait_s=CANCEL_WAIT_S)


def _run_row(record, job_size: int = 1) -> None:
    """One run: its label, its progress, and Cancel or Resume."""
    label_col, bar_col, action_col = st.columns([4, 5, 1.4], vertical_alignment="center")
    label_col.text(run_label(record, with_state=False))
    fraction, text = progress(record)
    if job_size > 1:
        text = text.replace(" img/s", " img/s (this run)")
    if record.state in ACTIVE:
        bar_col.progress(fraction, text=f"{record.state} · {text}")
        action_col.button(
            "Cancel", key=f"cancel-{record.run_id}", help=CANCEL_HELP,
            on_click=_act, args=(_cancel, record.run_id),
        )  # fmt: skip
    else:
        reason = record.status.get("reason", "")
        short = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS].rstrip() + "…"
        bar_col.caption(  # a long reason (a data error) in full behind the (?) only
            f"{record.state} · {text}" + (f" · {plain_text(short)}" if reason else ""),
            help=plain_text(reason) if short != reason else None,
        )
        resumable = record.state in RESUMABLE
        if resumable:
            action_col.button(
                "Resume", key=f"resume-{record.run_id}",
                on_click=_act, args=(manager.resume, record.run_id),
            )  # fmt: skip


def jobs_panel() -> None:
    """Running jobs (a stacked sweep group is one job, shown with its runs), the queue, recent
    runs. A click here reruns only this panel, and so does its progress while runs train; the
    page reruns when a run is added or deleted anywhere."""
    records = list_runs()
    st.subheader("Jobs")
    if ACTION_ERROR in st.session_state:
        st.error(plain_text(st.session_state.pop(ACTION_ERROR)))
    jobs = active_jobs(manager.jobs, records)
    queued = [r for r in records if r.state == RunState.QUEUED]
    store_root = code_span(manager.store.root, 300)  # a path may hold backticks or markup
    st.caption(
        slots_text(manager.slots(), len(jobs), sum(map(len, jobs)), len(queued))
        + f" · {manager.threads()} thread(s) per job · run store {store_root}"
    )
    if not records:
        st.info("No runs yet. Press **Train** or **Sweep β** above.")
        return
    for number, members in enumerate(jobs, 1):
        with st.container(border=True):
            speed = job_speed(members)
            per_run = f" ({speed / len(members):,.0f} per run)" if len(members) > 1 else ""
            kind = f"{len(members)} runs stacked in one process" if len(members) > 1 else "1 run"
            st.markdown(f"**Job {number}** · {kind} · {speed:,.0f} img/s in all{per_run}")
            for record in members:
                _run_row(record, len(members))
    shown = {r.run_id for members in jobs for r in members}
    rest = [r for r in records if not r.broken and r.run_id not in shown]
    for record in [r for r in rest if r.state == RunState.QUEUED] + [
        r for r in rest if r.state != RunState.QUEUED
    ][-12:][::-1]:
        _run_row(record)
    everything = lazy_expander(f"All runs ({len(records):,})", key="all_runs")
    if everything:  # closed, the panel's refresh neither builds nor resends the table
        listed, note = newest(records)
        if note:
            everything.caption(note)
        everything.dataframe(runs_frame(listed), hide_index=True)


live_fragment(jobs_panel)
refresh_on_change(added_or_removed=True)
