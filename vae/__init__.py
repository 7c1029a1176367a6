"""β-VAE library: model, objective, data, training, run store and job runner (no UI code)."""
