"""β-VAE library in three layers, each importing only the ones before it (no UI code anywhere):
vae.learn (what a VAE is and how it learns), vae.execution (how runs execute and persist),
vae.present (the tables and charts the pages draw)."""
