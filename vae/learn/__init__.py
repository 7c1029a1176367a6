"""What a VAE is and how it learns: config, data, model, likelihood, objective, training, evaluation.

No files, no processes: vae.execution runs and stores what this package computes.
"""
