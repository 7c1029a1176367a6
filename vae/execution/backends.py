"""Choose the execution backend by name: `local` (default) or `ray`, for the app and the CLI.

The only module that names a backend: everything else asks the `Backend` protocol
(vae.execution.backend) what it needs to know (`cluster`, `threads_per_job`, `resources`...).

VAE_BACKEND names the backend, VAE_RAY_ADDRESS the Ray cluster (`auto`, `ray://host:10001`, or a
head node's `host:6379`; unset: a local Ray instance started by this process). Both are read and
checked by vae.settings, like every other setting.
"""

from __future__ import annotations

from vae import settings
from vae.execution.backend import Backend
from vae.execution.local import LocalProcessBackend

BACKEND_ENV = settings.BACKEND.name
RAY_ADDRESS_ENV = settings.RAY_ADDRESS.name
BACKENDS = settings.BACKEND.choices


def make_backend(name: str | None = None, address: str | None = None) -> Backend:
    """The backend `name` (else $VAE_BACKEND, else local); ValueError (a SettingError) naming the
    valid choices. For the CLI: the app uses `backend_from_settings`, which never raises."""
    name = settings.BACKEND.parse(name) if name else settings.read(settings.BACKEND)
    if name == "local":
        return LocalProcessBackend()
    address = (
        settings.RAY_ADDRESS.parse(address) if address else settings.read(settings.RAY_ADDRESS)
    )
    from vae.execution.ray_backend import RayBackend  # deferred: ray costs ~1 s and 100 MB

    return RayBackend(address)


def backend_from_settings() -> tuple[Backend, list[str]]:
    """VAE_BACKEND's backend, or local processes with a message for each setting refused."""
    name, problem = settings.read_or_default(settings.BACKEND)
    if name == "ray":
        address, address_problem = settings.read_or_default(settings.RAY_ADDRESS)
        if address_problem is None:
            return make_backend("ray", address), []
        return _warm_local([address_problem])
    return _warm_local([problem] if problem else [])


def _warm_local(problems: list[str]) -> tuple[Backend, list[str]]:
    """Local processes for a long-lived server: VAE_WARM_WORKERS spares kept ready."""
    warm, problem = settings.read_or_default(settings.WARM_WORKERS)
    return LocalProcessBackend(warm=warm), [*problems, *([problem] if problem else [])]
