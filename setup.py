"""Package discovery for the DESIGN.md layout: `shared/` and `services/` at the repository
root are installed as `cryobus.shared` and `cryobus.services` (see pyproject.toml)."""

from setuptools import find_packages, setup

packages = ["cryobus", *(f"cryobus.{p}" for p in find_packages("cryobus"))]
packages += [f"cryobus.{p}" for p in find_packages(".", include=["shared", "shared.*", "services", "services.*"])]

setup(packages=packages)
