"""The β-VAE dashboard: `streamlit run app.py`.

Entry point only: it declares the pages; each page lives in pages/ and does its work through vae/.
"""

import streamlit as st

from ui import cluster_sidebar, job_manager

st.set_page_config(page_title="β-VAE dashboard", page_icon=":material/insights:", layout="wide")

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
    st.Page("pages/samples.py", title="Samples", icon=":material/grid_view:", url_path="samples"),
    st.Page(
        "pages/kl_term.py", title="The KL term", icon=":material/functions:", url_path="kl_term"
    ),
    st.Page(
        "pages/checkpoints.py", title="Checkpoints", icon=":material/save:", url_path="checkpoints"
    ),
]

manager = job_manager()
with st.sidebar:
    st.caption(f"Run store: `{manager.store.root}`")
    st.caption(f"{manager.slots()} run(s) at once · {manager.threads()} thread(s) each")
    cluster_sidebar(manager)

st.navigation(PAGES).run()
