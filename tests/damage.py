"""Damage a file the way a disk or a copy does: one byte flipped in place, the file otherwise intact.

torch writes a zip archive with each tensor's bytes in a member of its own (``archive/data/<n>``) and the
pickled structure in ``archive/data.pkl``; these helpers find a member's bytes through the zip's own headers.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path


def member_span(path: Path, name: str) -> tuple[int, int]:
    """(start, size) of the bytes of zip member ``name`` in the file."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def tensor_members(path: Path) -> list[str]:
    """The members holding tensor bytes, largest first."""
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if "/data/" in i.filename]
    return [i.filename for i in sorted(infos, key=lambda i: -i.file_size)]


def flip_byte(path: Path, member: str | None = None, at: float = 0.5, mask: int = 0x40) -> int:
    """Flip bits ``mask`` of one byte of ``member`` (default: the largest tensor), at fraction ``at`` of its bytes.
    Returns the file offset."""
    member = member or tensor_members(path)[0]
    start, size = member_span(path, member)
    offset = start + min(int(size * at), size - 1)
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    return offset
