"""Where each service's declaration lives; ``cryobus run <name>`` imports it lazily so a
container only imports (and needs the extras of) its own service."""

from __future__ import annotations

import importlib

from cryobus.shared.bus.service import Service

SERVICES: dict[str, str] = {
    "ingest": "cryobus.services.ingest.service",
    "metadata": "cryobus.services.metadata.service",
    "render": "cryobus.services.render.service",
    "labelling": "cryobus.services.labelling.service",
    "convert": "cryobus.services.convert.service",
}

# Everything `cryobus up` starts (make demo included). convert needs the `convert` extra (torch,
# finufft), which `make install` installs; a machine without it runs `--services` without convert.
DEFAULT_SERVICES = ("ingest", "metadata", "render", "labelling", "convert")


def load_service(name: str) -> Service:
    """Import and return the ``service`` object of ``name``.

    Raises:
        KeyError: unknown service name.
    """
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    return importlib.import_module(SERVICES[name]).service
