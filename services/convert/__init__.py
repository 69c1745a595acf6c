"""Particle stacks → CryoLike's physical and polar-Fourier tensors (the convert service's core).

Entry point: :func:`cryobus.services.convert.pipeline.convert`. What is computed, the file
layout and where cryobus departs from CryoLike are in ``docs/convert.md``.
"""
