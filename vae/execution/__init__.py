"""How runs execute and persist: run states, the run store, checkpoints, workers, jobs, backends.

Imports vae.learn, never the other way round.
"""
