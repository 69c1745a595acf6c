"""Particle stacks → CryoLike's physical and polar-Fourier tensors (the convert service's core).

Entry point: :func:`cryobus.services.convert.pipeline.convert`. What is computed, the file
layout and where cryobus departs from CryoLike are in ``docs/convert.md``.
"""

import os as _os

# Idle OpenMP threads (torch's and finufft's runtimes) must sleep, not spin: on a small machine
# spinning threads take the cores the working ones need (docs/convert.md, "Threads on small
# machines"). The OpenMP runtimes read this once, when their library loads, i.e. at `import torch`;
# this package's modules import torch, and Python runs this file before any of them, so every
# entry point (`cryobus run convert`, `cryobus up`, containers, `cryobus convert --local`) gets it
# unless torch was already imported by then. An explicit setting in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
