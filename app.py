"""The β-VAE dashboard: `streamlit run app.py`.

Entry point only: it declares the pages; each page lives in pages/ and does its work through vae/.
"""

from pathlib import Path

import streamlit as st

from ui import cluster_sidebar, job_manager, one_torch_thread, warm_up

# Served by this server (a material icon would make the browser fetch the favicon from a font host).
ICON = str(Path(__file__).resolve().parent / "static" / "favicon.png")

st.set_page_config(page_title="β-VAE dashboard", page_icon=ICON, layout="wide")

PAGES = [
    st.Page(
        "pages/train.py",
        title="Train",
        icon=":material/model_training:",
        url_path="train",
        default=True,
    ),
    st.Page("pages/gallery.py", title="β gallery", icon=":material/view_list:", url_path="gallery"),
    st.Page(
        "pages/tradeoff.py", title="Tradeoff", icon=":material/scatter_plot:", url_path="tradeoff"
    ),
    st.Page(
        "pages/posterior.py", title="Posterior", icon=":material/bar_chart:", url_path="posterior"
    ),
    st.Page("pages/probe.py", title="Probe", icon=":material/draw:", url_path="probe"),
    st.Page("pages/samples.py", title="Samples", icon=":material/grid_view:", url_path="samples"),
    st.Page(
        "pages/kl_term.py", title="The KL term", icon=":material/functions:", url_path="kl_term"
    ),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:", url_path="runs"),
    st.Page(
        "pages/checkpoints.py", title="Checkpoints", icon=":material/save:", url_path="checkpoints"
    ),
]

# Navigation across the top: no sidebar to squeeze the pages in a narrow window.
page = st.navigation(PAGES, position="top")
st.set_page_config(page_title=f"{page.title} · β-VAE dashboard")  # the browser tab's title
manager = job_manager()
if manager.backend.cluster:  # the cluster's free CPUs and GPUs; no sidebar otherwise
    with st.sidebar:
        cluster_sidebar(manager)
one_torch_thread()
try:
    page.run()
finally:  # also after st.stop(): torch and the model code, in the background, for later pages
    warm_up()
