"""``torch.save`` files written while their tensor is still being computed.

A ``.pt`` file (torch's zip format) holds a tensor's bytes as one stored, uncompressed record
(``<archive>/data/0``) between a small head (the pickled tensor metadata, format records, the
record's zip header) and a small tail (version records, zip central directory). Shape and dtype
fix both, so :func:`pt_layout` has torch write them for an empty tensor of that shape under
:class:`torch.serialization.skip_data` (which leaves the data region as a hole in a sparse
file) and keeps the head and tail; :func:`pt_chunks` then yields head, the tensor's bytes as
leading rows become final, and tail — for :meth:`~cryobus.shared.store.ArtifactStore.put_stream`
to write while the rest is computed.

The result is what ``torch.save(tensor, "<archive>.pt")`` writes with
``torch.serialization.set_crc32_options(False)``: the data record's CRC-32 field is 0 (torch
writes that too under ``skip_data``, and ``torch.load`` does not check it; strict zip tools such
as ``unzip -t`` report it). The archive name is the file's stem, as when CryoLike saves to a
path. Without ``skip_data`` (an older torch), or if torch's layout ever stops matching what
this module expects, :func:`pt_chunks` falls back to one ``torch.save`` of the finished tensor.
"""

from __future__ import annotations

import io
import logging
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # APPNOTE 4.3.7: zip local file header, 30 bytes
_LOCAL_SIGNATURE = 0x04034B50


@dataclass(frozen=True)
class PtLayout:
    """The bytes of a ``.pt`` file around its data record.

    Attributes:
        head: everything before the tensor's bytes.
        tail: everything after them.
        data_nbytes: size of the tensor's bytes (numel · element size).
    """

    head: bytes
    tail: bytes
    data_nbytes: int


def streaming_supported() -> bool:
    """Whether this torch has ``torch.serialization.skip_data`` (torch ≥ 2.6)."""
    return hasattr(torch.serialization, "skip_data")


def pt_layout(shape: tuple[int, ...], dtype: torch.dtype, archive: str) -> PtLayout:
    """Head and tail of ``torch.save`` of a contiguous tensor of ``shape`` and ``dtype``.

    Args:
        shape: tensor shape.
        dtype: tensor dtype.
        archive: the zip's root folder name (torch uses the file's stem), e.g.
            ``"particles_fourier_stack_000000"``.

    Raises:
        RuntimeError: torch lacks ``skip_data``, or wrote a layout this module does not expect
            (the data record missing, compressed, or not the tensor's size).
    """
    if not streaming_supported():
        raise RuntimeError("this torch has no torch.serialization.skip_data: .pt files cannot be streamed")
    template = torch.empty(shape, dtype=dtype)  # never touched: skip_data writes no tensor bytes
    nbytes = template.numel() * template.element_size()
    with tempfile.TemporaryDirectory(prefix="cryobus-pt-") as folder:
        path = Path(folder) / f"{archive}.pt"
        with torch.serialization.skip_data():
            torch.save(template, path)
        with zipfile.ZipFile(path) as archive_zip:
            records = [i for i in archive_zip.infolist() if i.filename.endswith("/data/0")]
        if len(records) != 1 or records[0].compress_type != zipfile.ZIP_STORED or records[0].file_size != nbytes:
            raise RuntimeError(f"unexpected torch.save layout for a {tuple(shape)} {dtype} tensor")
        with open(path, "rb") as f:
            f.seek(records[0].header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_SIGNATURE:
                raise RuntimeError("unexpected torch.save layout: no local header at the data record")
            start = records[0].header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            f.seek(0)
            head = f.read(start)
            f.seek(start + nbytes)
            tail = f.read()
    return PtLayout(head=head, tail=tail, data_nbytes=nbytes)


def pt_chunks(tensor: torch.Tensor, archive: str, ready: Iterable[int]) -> Iterator[memoryview | bytes]:
    """The bytes of ``tensor``'s ``.pt`` file, in order, each part as soon as it is final.

    Args:
        tensor: contiguous CPU tensor (B, ...) owning exactly its elements, filled row by row
            (by another thread) while this generator runs.
        archive: the zip's root folder name (see :func:`pt_layout`).
        ready: increasing counts of leading rows that are final, ending at B; iterating it may
            block, and any exception it raises propagates (the caller's write is abandoned).

    Yields:
        The head, then the bytes of rows [previous count, count) for each count, then the tail.

    Raises:
        ValueError: a non-contiguous or non-CPU tensor, or counts that go back or past B.
    """
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("pt_chunks needs a contiguous CPU tensor")
    rows = tensor.shape[0]
    layout = None
    if streaming_supported():
        try:
            layout = pt_layout(tuple(tensor.shape), tensor.dtype, archive)
        except RuntimeError as exc:  # skip_data is a prototype API: a changed layout must not stop a conversion
            log.warning("writing %s.pt without streaming: %s", archive, exc)
    if layout is None:
        for _ in ready:
            pass
        buf = io.BytesIO()
        torch.save(tensor, buf)
        yield buf.getbuffer()
        return
    data = memoryview(tensor.view(torch.uint8).numpy()).cast("B") if tensor.numel() else memoryview(b"")
    if data.nbytes != layout.data_nbytes:
        raise ValueError("pt_chunks needs a tensor owning exactly its elements")
    row_bytes = data.nbytes // rows if rows else 0
    yield layout.head
    done = 0
    for count in ready:
        if count < done or count > rows:
            raise ValueError(f"ready counts must increase within [0, {rows}], got {count} after {done}")
        if count > done:
            yield data[done * row_bytes : count * row_bytes]
            done = count
    if done != rows:
        raise ValueError(f"only {done} of {rows} rows were reported ready")
    yield layout.tail
