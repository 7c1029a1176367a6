"""Tables and Altair charts the pages draw (no Streamlit here: pages stay thin)."""
