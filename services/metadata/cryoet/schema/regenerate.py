"""Regenerate ``metadata_files.py`` from the vendored CryoET Data Portal LinkML schema.

This script is a *build tool*, not runtime code: LinkML stays out of cryobus's dependencies.
Run it in a throw-away virtual environment with the generator versions pinned here (they are
the versions the portal's own ``schema/poetry.lock`` pins; ``linkml 1.9.6`` with
``linkml-runtime 1.10`` is known to crash)::

    python3 -m venv /tmp/linkml-venv
    /tmp/linkml-venv/bin/pip install linkml==1.9.6 linkml-runtime==1.9.5
    /tmp/linkml-venv/bin/python services/metadata/cryoet/schema/regenerate.py

It writes ``services/metadata/cryoet/schema/metadata_files.py`` (commit it) and, with
``--keep-materialized DIR``, the intermediate materialized YAML for inspection.

Step 1, *materialize* (our own implementation of the step the portal's ``schema.py``
performs; see ``docs/cryoet-portal.md``): the portal's class files do not carry types
themselves. Each class attribute names a slot of ``common.yaml`` through
``exact_mappings: [cdp-common:<slot>]`` (also inside ``any_of`` entries), and that slot holds
the range, unit, bounds and regex. We copy those onto the attribute, turn custom string types
(``GO_ID``, ``ORCID`` …) into their base type plus a ``pattern``, fold ``any_of`` alternatives
of one base type into one alternation ``pattern`` (enum values become ``^(a|b)$`` so an
"enum or formatted string" attribute keeps checking its enum), set ``minimum_cardinality: 1``
on required lists, and merge common + core + file classes into one self-contained schema.

Step 2: ``gen-pydantic`` on that schema.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

GENERATOR_PINS = {"linkml": "1.9.6", "linkml-runtime": "1.9.5"}

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
COMMON = VENDOR / "core" / "v2.0.0" / "common.yaml"
CORE = VENDOR / "core" / "v2.0.0" / "metadata.yaml"
FILES = VENDOR / "metadata_files" / "v2.0.0" / "metadata_files.yaml"
OUTPUT = HERE / "metadata_files.py"

# What an attribute inherits from the common slot it maps to.
SLOT_KEYS = (
    "range", "any_of", "description", "required", "recommended", "unit", "ifabsent",
    "minimum_value", "maximum_value", "pattern", "multivalued",
)
# What an any_of alternative keeps (the rest belongs to the attribute as a whole).
ALTERNATIVE_KEYS = ("range", "any_of", "minimum_value", "maximum_value", "pattern")
TYPE_BASES = {"str": "string", "float": "float", "int": "integer", "bool": "boolean"}
BUILTINS = {"string", "float", "integer", "boolean", "date", "datetime", "double", "decimal", "Any"}
PREFIX = "cdp-common:"


def check_versions() -> None:
    """Refuse to run with generator versions other than the pinned ones (output would drift)."""
    from importlib.metadata import version

    wrong = {p: version(p) for p, want in GENERATOR_PINS.items() if version(p) != want}
    if wrong:
        sys.exit(f"need {GENERATOR_PINS}, found {wrong}; use a throw-away venv (see module docstring)")


def _strip(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


class Materializer:
    def __init__(self, common: dict):
        self.slots: dict = common.get("slots") or {}
        self.types: dict = common.get("types") or {}
        self.enums: dict = common.get("enums") or {}

    def _slot(self, ref: str) -> dict:
        name = _strip(ref)
        if name not in self.slots:
            raise KeyError(f"exact_mappings names unknown common slot {ref!r}")
        return self.slots[name]

    def _mapped(self, node: dict, keys: tuple[str, ...]) -> dict:
        """``node`` with the fields of the common slot it maps to filled in (node's own win)."""
        node = dict(node)
        refs = node.pop("exact_mappings", None)
        if refs is None:
            return node
        refs = [refs] if isinstance(refs, str) else refs
        merged: dict = {}
        for ref in refs:
            merged.update({k: copy.deepcopy(v) for k, v in self._slot(ref).items() if k in keys})
        merged.update(node)
        merged["exact_mappings"] = refs
        return merged

    def _alternatives(self, node: dict) -> list[dict]:
        """Flatten a (possibly nested) any_of into single-range alternatives."""
        if "any_of" not in node:
            alt = {k: node[k] for k in ALTERNATIVE_KEYS if k in node}
            return [alt] if "range" in alt else []
        out: list[dict] = []
        for entry in node["any_of"]:
            out.extend(self._alternatives(self._mapped(entry, ALTERNATIVE_KEYS)))
        return out

    def _normalize(self, alt: dict) -> dict:
        """Custom types -> base type + pattern (+ bounds); enums and classes stay as they are."""
        alt = dict(alt)
        rng = _strip(str(alt["range"]))
        alt["range"] = rng
        if rng in self.types:
            t = self.types[rng]
            alt["range"] = TYPE_BASES.get(t.get("base", "str"), "string")
            for key in ("pattern", "minimum_value", "maximum_value"):
                if key in t and key not in alt:
                    alt[key] = t[key]
        return alt

    def _enum_pattern(self, enum: str) -> str:
        values = list((self.enums[enum].get("permissible_values") or {}).keys())
        return "^(" + "|".join(re.escape(str(v)) for v in values) + ")$"

    def attribute(self, attr: dict | None) -> dict:
        attr = self._mapped(attr or {}, SLOT_KEYS)
        # A slot named inside any_of still says whether the attribute is required, its unit and
        # description: lift those to the attribute (its own values win).
        for entry in attr.get("any_of") or []:
            if "exact_mappings" in entry:
                lifted = self._mapped(entry, SLOT_KEYS)
                for key in SLOT_KEYS:
                    if key not in ALTERNATIVE_KEYS and key in lifted and key not in attr:
                        attr[key] = lifted[key]
        alts = [self._normalize(a) for a in self._alternatives(attr)]
        for key in ALTERNATIVE_KEYS:
            attr.pop(key, None)
        if len(alts) == 1:
            attr.update(alts[0])
        elif alts:
            attr.update(self._fold(alts))
        if "any_of" in attr:
            # gen-pydantic cannot type a default for a union ("ifabsent value float(1) could not be
            # processed"); the portal itself later commented these defaults out.
            attr.pop("ifabsent", None)
        if attr.get("multivalued") and attr.get("required"):
            attr["minimum_cardinality"] = 1
        return attr

    def _fold(self, alts: list[dict]) -> dict:
        """Several alternatives: strings (incl. enums, via their values) fold into one pattern."""
        stringy = [a for a in alts if a["range"] == "string" or a["range"] in self.enums]
        other = [a for a in alts if a not in stringy]
        patterns = []
        for a in stringy:
            if a["range"] in self.enums:
                patterns.append(self._enum_pattern(a["range"]))
            elif "pattern" in a:
                patterns.append(a["pattern"])
            else:  # a free string among the alternatives: any string goes
                patterns = []
                break
        folded: dict = {}
        if stringy and patterns:
            folded["pattern"] = "|".join(f"(?:{p})" for p in patterns)
        if not other:
            folded["range"] = "string"
            return folded
        # numeric (or class) alternatives stay an any_of next to the folded string branch
        any_of = []
        for a in other:
            any_of.append({k: v for k, v in a.items() if k in ("range", "minimum_value", "maximum_value")})
        if stringy:
            any_of.append({"range": "string"})
        if len(any_of) == 1:
            folded.update(any_of[0])
        else:
            folded["any_of"] = any_of
        return folded

    def classes(self, classes: dict | None) -> dict:
        out = {}
        for name, cls in (classes or {}).items():
            cls = copy.deepcopy(cls) or {}
            if cls.get("attributes"):
                cls["attributes"] = {a: self.attribute(v) for a, v in cls["attributes"].items()}
            elif "attributes" in cls:
                cls.pop("attributes")
            out[name] = cls
        return out


def materialize(common: dict, core: dict, files: dict) -> dict:
    """One self-contained schema: common types/enums + common, core and file classes, resolved."""
    m = Materializer(common)
    prefixes = {**(common.get("prefixes") or {}), **(core.get("prefixes") or {}), **(files.get("prefixes") or {})}
    classes = {**m.classes(common.get("classes")), **m.classes(core.get("classes")), **m.classes(files.get("classes"))}
    return {
        "id": "https://cryobus.invalid/cryoet/metadata_files",
        "name": "cdp_meta_files",
        "version": str(files.get("version", "")),
        "description": "CryoET Data Portal metadata file classes, materialized by cryobus regenerate.py",
        "prefixes": prefixes,
        "default_prefix": "cdp-meta-files",
        "default_range": "Any",
        "imports": ["linkml:types"],
        "types": copy.deepcopy(common.get("types") or {}),
        "enums": copy.deepcopy(common.get("enums") or {}),
        "classes": classes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-materialized", type=Path, help="also write the materialized YAML here")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    check_versions()

    load = lambda p: yaml.safe_load(p.read_text(encoding="utf-8"))  # noqa: E731
    schema = materialize(load(COMMON), load(CORE), load(FILES))
    with tempfile.TemporaryDirectory() as tmp:
        mat = Path(tmp) / "metadata_files_materialized.yaml"
        mat.write_text(yaml.safe_dump(schema, sort_keys=False, allow_unicode=True), encoding="utf-8")
        if args.keep_materialized:
            args.keep_materialized.mkdir(parents=True, exist_ok=True)
            (args.keep_materialized / mat.name).write_bytes(mat.read_bytes())
        gen = Path(sys.executable).with_name("gen-pydantic")
        # relative path + cwd: the generator records the source file name in the module,
        # and a temp-dir path there would make every regeneration differ
        done = subprocess.run([str(gen), mat.name], capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            sys.exit(f"gen-pydantic failed:\n{done.stderr[-4000:]}")
        code = done.stdout
    header = (
        "# GENERATED by services/metadata/cryoet/schema/regenerate.py with "
        + ", ".join(f"{p}=={v}" for p, v in GENERATOR_PINS.items())
        + "\n# from the vendored CryoET Data Portal LinkML schema (vendor/, see vendor/NOTICE.md).\n"
        "# Do not edit by hand: fix the materialize step or cryoet/validation.py instead.\n"
        "# ruff: noqa\n# flake8: noqa\n"
    )
    args.output.write_text(header + code, encoding="utf-8")
    print(f"wrote {args.output} ({len(code.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
