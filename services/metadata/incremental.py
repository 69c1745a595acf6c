"""The metadata table kept up to date one exposure at a time, instead of re-merged from scratch.

A full :func:`~cryobus.services.metadata.table.merge_partials` plus ``to_csv`` of 10,000 micrographs
costs ≈ 230 ms on the development machine (merge ≈ 130 ms, CSV ≈ 110 ms: both scale with the whole
table), while a new exposure changes one row. :class:`IncrementalTable` keeps

* every source's partial frame, keyed by ``micrograph_name``;
* the merged table (sorted by ``micrograph_name``) and one rendered CSV line per row.

An :meth:`IncrementalTable.upsert` replaces the given rows of one partial, re-merges *only the
names it touched* by running the very same ``merge_partials`` on the slices of every partial
that hold those names (so the source-priority rules cannot drift from the full build), splices
the merged rows and their CSV lines in place, and leaves the rest alone. When an upsert gives a
partial a column it did not have (which can change a rule for every row: e.g. the first
``num_particles`` column turns unknown counts into 0), the table is rebuilt in full instead.

``csv_bytes()`` is the header plus the joined lines (byte-identical to
``prismpyp_layout.table_csv_bytes(merge_partials(partials).table)``); ``parquet_bytes()`` writes
the whole table (Parquet is columnar: there is no row to patch), ≈ 12 ms for 10,000 rows.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import pandas as pd

from cryobus.services.metadata.prismpyp_layout import table_csv_bytes, table_parquet_bytes
from cryobus.services.metadata.table import (
    COLUMNS,
    FLOAT_COLUMNS,
    GROUPS,
    TEXT_COLUMNS,
    Partial,
    merge_partials,
)


def _present(value: object) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _ordered(partials: Sequence[Partial], priority: Sequence[str]) -> list[int]:
    """As table.merge_partials: listed sources in ``priority`` order, then the rest in input order."""
    rank = {s: i for i, s in enumerate(priority)}
    return sorted(range(len(partials)), key=lambda i: (rank.get(partials[i].source, len(rank)), i))


def _render_lines(rows: pd.DataFrame) -> list[bytes]:
    """One ``\\n``-terminated CSV line per row of ``rows`` (header dropped), formatted exactly as
    :func:`table_csv_bytes` formats the full table."""
    lines = table_csv_bytes(rows).split(b"\n")[1:-1]
    if len(lines) == len(rows):
        return [line + b"\n" for line in lines]
    # a quoted field holds a line break: render row by row
    return [table_csv_bytes(rows.iloc[i : i + 1]).split(b"\n", 1)[1] for i in range(len(rows))]


class IncrementalTable:
    """A dataset's merged metadata table, updated row by row.

    Invariant: after every call, :meth:`table` equals ``merge_partials(self.partials()).table``,
    :meth:`csv_bytes` equals ``table_csv_bytes`` of it and :attr:`pixel_size_A` equals its
    ``pixel_size_A``.

    Args:
        partials: the dataset's partials (any sources, in the order ``merge_partials`` would get
            them: ties between sources of equal priority go to the earlier one). A partial is
            addressed later by ``(source, file)``.

    Raises:
        InputError / ValueError: as :func:`merge_partials` (duplicate names, no
            ``micrograph_name`` column); ValueError: two partials with the same (source, file).
    """

    def __init__(self, partials: Sequence[Partial]):
        keys = [(p.source, p.file) for p in partials]
        if len(set(keys)) != len(keys):
            raise ValueError("two partials with the same (source, file)")
        self._partials: list[Partial] = []
        self._frames: list[pd.DataFrame] = []  # per partial, indexed by micrograph_name
        for p in partials:
            self._partials.append(p)
            self._frames.append(self._indexed(p.frame))
        self._rebuild()

    @staticmethod
    def _indexed(frame: pd.DataFrame) -> pd.DataFrame:
        if "micrograph_name" not in frame.columns:
            raise ValueError("partial frame has no micrograph_name column")
        out = frame.copy()
        out.index = pd.Index(out["micrograph_name"].astype(str).to_numpy(dtype=object), name=None)
        return out

    def _current_partials(self) -> list[Partial]:
        return [
            Partial(source=p.source, frame=f.reset_index(drop=True), file=p.file, pixel_size_A=p.pixel_size_A)
            for p, f in zip(self._partials, self._frames)
        ]

    def _rebuild(self) -> None:
        merged = merge_partials(self._current_partials())
        self._table = merged.table.reset_index(drop=True)
        self._names: list[str] = [str(n) for n in self._table["micrograph_name"]]
        self._lines = _render_lines(self._table)
        self._header = table_csv_bytes(self._table.iloc[:0])
        self._pixel_size_A = merged.pixel_size_A
        self._table_cache: pd.DataFrame | None = self._table

    def _find(self, source: str, file: str | None) -> int:
        hits = [i for i, p in enumerate(self._partials) if p.source == source and (file is None or p.file == file)]
        if len(hits) != 1:
            raise ValueError(f"{len(hits)} partials match source={source!r} file={file!r}; expected exactly one")
        return hits[0]

    def add_partial(self, partial: Partial) -> None:
        """A new source (or job) for the dataset: appended after the others, full rebuild."""
        if any((p.source, p.file) == (partial.source, partial.file) for p in self._partials):
            raise ValueError(f"a partial ({partial.source}, {partial.file}) is already present")
        self._partials.append(partial)
        self._frames.append(self._indexed(partial.frame))
        self._rebuild()

    def upsert(
        self,
        source: str,
        rows: pd.DataFrame,
        *,
        file: str | None = None,
        pixel_size_A: float | None = None,
    ) -> list[str]:
        """Replace (or add) ``rows`` in one source's partial and update the merged table.

        Args:
            source: the partial's source (``Partial.source``); ``file`` picks one when the
                source has several partials.
            rows: ``micrograph_name`` plus any columns of :data:`COLUMNS` (units as in
                docs/metadata-columns.md); each row replaces that name's whole row in the partial.
            pixel_size_A: the partial's new ``pixel_size_A`` (Å/px), if it changed.

        Returns:
            The names whose merged row was recomputed (sorted).

        Raises:
            ValueError: no or several partials match, or ``rows`` has no ``micrograph_name``.
            InputError: ``rows`` lists a name twice.
        """
        i = self._find(source, file)
        new = self._indexed(rows)
        if new.index.has_duplicates:
            merge_partials([Partial(source, rows, file or "")])  # raises the InputError naming the name
        old = self._frames[i]
        kept = old.drop(index=old.index.intersection(new.index))
        grows = not set(new.columns) <= set(old.columns)
        self._frames[i] = pd.concat([kept, new]) if len(kept) else new
        if pixel_size_A is not None:
            p = self._partials[i]
            self._partials[i] = Partial(p.source, p.frame, p.file, pixel_size_A)
        self._table_cache = None
        if grows:
            self._rebuild()
            return sorted(new.index)
        names = sorted(set(new.index))
        self._splice(names)
        if pixel_size_A is not None or all(p.pixel_size_A is None for p in self._partials):
            self._pixel_size_A = self._pixel()
        return names

    def _merged_rows(self, names: list[str]) -> pd.DataFrame:
        """``merge_partials``' rules (table.GROUPS) applied to a few names in plain Python: the
        pandas version costs ≈ 40 ms of fixed overhead even for one row. The invariant test
        (tests/metadata/test_incremental.py) checks it against ``merge_partials``."""
        cells: list[list[dict[str, object] | None]] = []  # per name, per partial: its row or None
        for name in names:
            per: list[dict[str, object] | None] = []
            for f in self._frames:
                per.append(f.loc[name].to_dict() if name in f.index else None)
            cells.append(per)
        has_counts = any("num_particles" in f.columns for f in self._frames)
        out: dict[str, list[object]] = {c: [] for c in COLUMNS}
        for name, per in zip(names, cells):
            row: dict[str, object] = {"micrograph_name": name}
            for lead, members, priority in GROUPS:
                order = _ordered(self._partials, priority)
                chosen = next((i for i in order if per[i] is not None and _present(per[i].get(lead))), None)
                for c in (lead, *members):
                    if chosen is not None:
                        row[c] = per[chosen].get(c) if c in self._frames[chosen].columns else None
                    elif c != lead:  # no lead anywhere: each member from the first source that has it
                        row[c] = next(
                            (per[i][c] for i in order if per[i] is not None and _present(per[i].get(c))), None
                        )
                    else:
                        row[c] = None
            for c in COLUMNS:
                out[c].append(row.get(c))
        frame = pd.DataFrame({"micrograph_name": pd.Series(out["micrograph_name"], dtype=object)})
        for c in COLUMNS[1:]:
            values = pd.Series(out[c], dtype=object)
            if c in FLOAT_COLUMNS:
                frame[c] = pd.to_numeric(values, errors="coerce").astype(float)
            elif c in TEXT_COLUMNS:
                frame[c] = values.where(values.notna(), None)
            elif c == "num_particles":
                counts = pd.to_numeric(values, errors="coerce")
                frame[c] = counts.fillna(0).round().astype("Int64") if has_counts else counts.astype("Int64")
        return frame[COLUMNS]

    def _splice(self, names: list[str]) -> None:
        merged = self._merged_rows(names)
        lines = _render_lines(merged)
        for row in range(len(merged)):
            name = str(merged.iat[row, 0])
            pos = bisect.bisect_left(self._names, name)
            if pos < len(self._names) and self._names[pos] == name:
                for col in range(len(COLUMNS)):  # cell by cell: a row assignment would upcast dtypes
                    self._table.iat[pos, col] = merged.iat[row, col]
                self._lines[pos] = lines[row]
            else:
                values = merged.iloc[row : row + 1]
                self._table = pd.concat([self._table.iloc[:pos], values, self._table.iloc[pos:]], ignore_index=True)
                self._names.insert(pos, name)
                self._lines.insert(pos, lines[row])

    def _pixel(self) -> float | None:
        """merge_partials' rule: partial pixel sizes in priority order, else the table's most common."""
        empty = [Partial(p.source, p.frame.iloc[:0], p.file, p.pixel_size_A) for p in self._partials]
        pixel = merge_partials(empty).pixel_size_A
        if pixel is None:
            values = self._table["pixel_size_A"].dropna()
            pixel = None if values.empty else float(values.mode().iloc[0])
        return pixel

    @property
    def pixel_size_A(self) -> float | None:
        """The dataset's pixel size (Å/px) by ``merge_partials``' rule, None when unknown."""
        return self._pixel_size_A

    def partials(self) -> list[Partial]:
        """The current partials (frames with a fresh RangeIndex), in their merge order."""
        return self._current_partials()

    def table(self) -> pd.DataFrame:
        """The merged table: columns :data:`COLUMNS`, sorted by ``micrograph_name``, dtypes as
        ``merge_partials`` gives them."""
        if self._table_cache is None:
            self._table = self._table[COLUMNS].reset_index(drop=True)
            self._table_cache = self._table
        return self._table_cache

    def csv_bytes(self) -> bytes:
        """``micrograph_metadata.csv`` bytes (``prismpyp_layout.table_csv_bytes`` conventions)."""
        return self._header + b"".join(self._lines)

    def parquet_bytes(self) -> bytes:
        """``micrograph_metadata.parquet`` bytes (``prismpyp_layout.table_parquet_bytes``)."""
        return table_parquet_bytes(self.table())

    def __len__(self) -> int:
        return len(self._names)

