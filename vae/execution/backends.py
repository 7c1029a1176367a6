"""Choose the execution backend by name: `local` (default) or `ray`, for the app and the CLI.

The only module that names a backend: everything else asks the `Backend` protocol
(vae.execution.backend) what it needs to know (`cluster`, `threads_per_job`, `resources`...).

VAE_BACKEND names the backend, VAE_RAY_ADDRESS the Ray cluster (`auto`, `ray://host:10001`, or a
head node's `host:6379`; unset: a local Ray instance started by this process).
"""

from __future__ import annotations

import os
import re

from vae.execution.backend import Backend
from vae.execution.local import LocalProcessBackend

BACKEND_ENV = "VAE_BACKEND"
RAY_ADDRESS_ENV = "VAE_RAY_ADDRESS"
BACKENDS = ("local", "ray")
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5})$")


def make_backend(name: str | None = None, address: str | None = None) -> Backend:
    """The backend `name` (else $VAE_BACKEND, else local); ValueError naming the valid choices."""
    name = (name or os.environ.get(BACKEND_ENV) or "local").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} ({BACKEND_ENV}); valid: {', '.join(BACKENDS)}")
    if name == "local":
        return LocalProcessBackend()
    address = (address or os.environ.get(RAY_ADDRESS_ENV) or "").strip() or None
    if address is not None and not _ADDRESS.fullmatch(address):
        raise ValueError(
            f"{RAY_ADDRESS_ENV}={address[:100]!r} is not a Ray address: use auto, "
            "ray://HOST:10001 or HOST:6379"
        )
    from vae.execution.ray_backend import RayBackend  # deferred: ray costs ~1 s and 100 MB

    return RayBackend(address)
