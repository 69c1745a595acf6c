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
}

DEFAULT_SERVICES = ("ingest", "metadata", "render", "labelling")


def load_service(name: str) -> Service:
    """Import and return the ``service`` object of ``name``.

    Raises:
        KeyError: unknown service name.
    """
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    return importlib.import_module(SERVICES[name]).service
