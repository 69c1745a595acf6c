"""Render parameters: defaults keep prismPYP's layout; other parameters go beside, deterministically."""

from __future__ import annotations

import pytest

from cryobus.services.render.params import DEFAULT, RenderParams
from cryobus.shared.errors import InputError


def test_defaults_have_no_tag_and_the_prismpyp_prefix():
    assert DEFAULT.tag is None and DEFAULT.prefix("ds") == "ds"


def test_same_parameters_same_tag_different_parameters_different_tag():
    a = RenderParams.parse({"max_size": 2048, "clip_percentiles": [1, 99]})
    b = RenderParams.parse({"clip_percentiles": (1.0, 99.0), "max_size": 2048})
    c = RenderParams.parse({"max_size": 512})
    assert a.tag == b.tag and a.tag != c.tag and a.tag.startswith("p")
    assert a.prefix("ds") == f"ds/renders/{a.tag}"
    assert RenderParams.parse({"max_size": 1024}).tag is None  # explicitly the default


@pytest.mark.parametrize(
    ("values", "field"),
    [({"max_size": 4}, "max_size"), ({"clip_percentiles": [99, 1]}, "clip_percentiles"),
     ({"colour": "red"}, "colour"), ({"quality": 101}, "quality")],
)
def test_bad_parameters_name_the_field(values, field):
    with pytest.raises(InputError) as err:
        RenderParams.parse(values)
    assert err.value.field == field
