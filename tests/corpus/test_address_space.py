"""Headers that promise 100 GB, read under an address-space limit (``RLIMIT_AS``) in a child
process: allocations made in C (cryosparc-tools' dataset, Pillow, the unpickler), which
tracemalloc does not see, must not be attempted either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from cryobus.services.metadata import cryosparc_exposures, cryosparc_particles, nextpyp
    from cryobus.services.render import picks
    from cryobus.shared.errors import InputError
    from cryobus.shared.formats import mrc, cryosparc
    from tests.corpus.corrupt import PROMISED_100_GB, hostile_pickles, mrc_promising, npy_promising
    from tests.corpus.test_cs_corpus import _csdat_promising
    from tests.corpus.test_mrc_corpus import _tiff_header

    folder = Path(sys.argv[1])
    files = {"huge.mrc": mrc_promising(PROMISED_100_GB), "huge.tif": _tiff_header(2**31 - 1, 2**31 - 1),
             "huge.cs": npy_promising(PROMISED_100_GB), "huge_csdat.cs": _csdat_promising(PROMISED_100_GB)}
    for name, blob in hostile_pickles(folder / "pwned").items():
        files[name.replace(" ", "_").replace("/", "_") + ".pkl"] = blob
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    calls = [(mrc.read_header, "huge.mrc"), (mrc.read_image, "huge.mrc"), (mrc.read_stack, "huge.mrc"),
             (mrc.read_tiff_image, "huge.tif"), (cryosparc.read_cs, "huge.cs"), (picks.cryosparc_particles, "huge.cs"),
             (cryosparc_exposures.load_dataset, "huge.cs"), (cryosparc_exposures.load_dataset, "huge_csdat.cs"),
             (cryosparc_particles.particle_counts, "huge_csdat.cs")]
    calls += [(nextpyp.load_pkl, name) for name in files if name.endswith(".pkl")]
    # From here on the process may grow by 256 MiB at most: an attempt at 100 GB fails loudly.
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = []
    for fn, name in calls:
        try:
            fn(folder / name)
            out.append([fn.__name__, name, "returned", ""])
        except InputError as exc:
            out.append([fn.__name__, name, "InputError", exc.reason])
        except BaseException as exc:
            out.append([fn.__name__, name, type(exc).__name__, str(exc)])
    print(json.dumps(out))
    """
)


def test_no_reader_even_tries_to_allocate_what_a_header_promises(tmp_path):
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) > 20
    for fn, name, outcome, reason in results:
        assert outcome == "InputError", (fn, name, outcome, reason)
        assert "MemoryError" not in reason and "allocate" not in reason.lower(), (fn, name, reason)
    assert not (tmp_path / "pwned").exists()
