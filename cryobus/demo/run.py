"""``make demo`` / ``cryobus demo``: the whole system on one acquisition, start to finish.

Without ``--data`` a synthetic RELION-style acquisition is generated first (see
docs/demo-data.md). The run uses an embedded NATS and a local artifact folder, waits until
every discovered input is processed (``--exit-when-idle``), and prints where every artifact is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cryobus.registry import DEFAULT_SERVICES
from cryobus.shared.config import Settings
from cryobus.supervisor import Supervisor


def run_demo(*, data: Path | None, out: Path, keep_state: bool = False) -> int:
    """Run the demo; returns the exit code of ``cryobus up --exit-when-idle``."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        from cryobus.demo.synthetic import generate_acquisition

        data = out / "synthetic-acquisition"
        if not data.exists():
            acq = generate_acquisition(data)
            print(
                f"cryobus demo: generated {len(acq.micrographs)} synthetic micrographs at "
                f"{acq.pixel_size_A} Å/px in {data}",
                flush=True,
            )
    data = data.resolve()
    if not data.is_dir():
        print(f"cryobus demo: {data} is not a folder")
        return 2
    state = out / ".cryobus-state"
    if state.exists() and not keep_state:
        shutil.rmtree(state)  # a fresh bus and ingest ledger: the demo always shows the full run
    settings = Settings(
        watch=[data],
        store_url=(out / "artifacts").as_uri(),
        state_dir=state,
        settle_s=0.5,
        labelling_port=0,  # the web app on a free port: a demo must not collide with a running `cryobus up`
    )
    print(f"cryobus demo: processing {data}; artifacts go to {out / 'artifacts'}", flush=True)
    return Supervisor(settings=settings, services=list(DEFAULT_SERVICES), exit_when_idle=True).run()
