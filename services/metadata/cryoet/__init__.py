"""Tomography metadata in the CryoET Data Portal layout (pure library; no bus wiring).

From a tilt-series folder (SerialEM ``.mdoc``, IMOD ``.tlt``/``.rawtlt``/``.xf``, tilt-series and
tomogram MRCs) plus a user YAML dataset config, write the portal's dataset / run / tilt-series /
tomogram / annotation metadata JSON, point annotations as NDJSON and OME-Zarr copies of the
tomograms. See docs/cryoet-portal.md.

Typical use::

    derived = derive(folder)
    config = load_config(yaml_path)
    missing = missing_config_fields(config, derived)      # [] when complete
    manifest = write_portal_layout(out_dir, config, derived, dataset_id=10001)
"""

from cryobus.services.metadata.cryoet.config import DatasetConfig, load_config, missing_config_fields
from cryobus.services.metadata.cryoet.derive import DerivedFacts, VolumeFacts, derive
from cryobus.services.metadata.cryoet.imod import read_tilt_angles, read_xf
from cryobus.services.metadata.cryoet.layout import ManifestEntry, PointAnnotation, write_portal_layout
from cryobus.services.metadata.cryoet.mdoc import MdocSummary, read_mdoc
from cryobus.services.metadata.cryoet.validation import validate_file, validate_metadata

__all__ = [
    "DatasetConfig",
    "DerivedFacts",
    "ManifestEntry",
    "MdocSummary",
    "PointAnnotation",
    "VolumeFacts",
    "derive",
    "load_config",
    "missing_config_fields",
    "read_mdoc",
    "read_tilt_angles",
    "read_xf",
    "validate_file",
    "validate_metadata",
    "write_portal_layout",
]
