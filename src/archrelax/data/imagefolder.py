"""``imagefolder:PATH``: a folder or ``.zip`` in ImageFolder layout with ``train/`` and ``test/``.

``PATH/{train,test}/<class>/**/<image>`` (or the same under one top-level folder, as in a zip of a folder).
Class names are the sorted folder names; files with other extensions and hidden files are ignored, like
torchvision's ``ImageFolder``. A zip is read once into memory and decoded without extracting; stored
(uncompressed) members are sliced straight out of that buffer. All images must share one size.
"""
from __future__ import annotations

import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")  # what torchvision.io.decode_image reads
SPLITS = ("train", "test")


def identity(path: Path) -> dict[str, Any]:
    """What the decoded tensors depend on: the zip's size and mtime, or every file's size and mtime."""
    st = path.stat()
    if path.is_file():
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = total = latest = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for f in filenames:
            s = os.stat(os.path.join(dirpath, f))
            files, total, latest = files + 1, total + s.st_size, max(latest, s.st_mtime_ns)
        latest = max(latest, os.stat(dirpath).st_mtime_ns)  # a deleted file changes its folder's mtime
    return {"path": str(path), "files": files, "bytes": total, "mtime_ns": latest}


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


class _Zip:
    """Member listing and bytes of a zip, read into memory once."""

    def __init__(self, path: Path, read: bool = True):
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise ValueError(f"imagefolder {path}: not a readable zip file ({e})") from e
        self.infos = {i.filename: i for i in self.zf.infolist()}
        if read:  # read=False: the listing only
            self.raw = bytearray(path.read_bytes())
            self.buf = torch.frombuffer(self.raw, dtype=torch.uint8)  # members are zero-copy slices of this

    def names(self) -> list[str]:
        return list(self.infos)

    def read(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        if info.compress_type == zipfile.ZIP_STORED:
            # local header: 30 fixed bytes, then file name and extra field, then the data
            off = info.header_offset
            n, m = struct.unpack_from("<HH", self.raw, off + 26)
            start = off + 30 + n + m
            data = self.buf[start : start + info.file_size]
            # zipfile checks the CRC of what it inflates; these bytes bypass it, so check here
            # (zlib.crc32 runs at GB/s: far below the cost of decoding the image)
            if zlib.crc32(memoryview(self.raw)[start : start + info.file_size]) != info.CRC:
                raise ValueError(f"imagefolder {self.path}: member {name} is corrupt (CRC-32 mismatch)")
            return data
        try:
            return torch.frombuffer(bytearray(self.zf.read(info)), dtype=torch.uint8)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise ValueError(f"imagefolder {self.path}: member {name} is corrupt or unreadable ({e})") from e


class _Folder:
    def __init__(self, path: Path):
        self.path = path

    def names(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            rel = Path(dirpath).relative_to(self.path).as_posix()
            prefix = "" if rel == "." else rel + "/"
            out += [prefix + d + "/" for d in dirnames] + [prefix + f for f in filenames]
        return out

    def read(self, name: str) -> torch.Tensor:
        return torch.frombuffer(bytearray((self.path / name).read_bytes()), dtype=torch.uint8)


def _find_root(names: list[str], where: Path) -> str:
    """'' when train/ and test/ are at the top, 'X/' when they sit in one top-level folder X."""
    tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n}
    for prefix in [""] + sorted(tops):
        if all(any(n.startswith(f"{prefix}{s}/") for n in names) for s in SPLITS):
            return prefix
    have = sorted(t for t in tops)
    missing = [s for s in SPLITS if s + "/" not in tops]
    raise FileNotFoundError(
        f"imagefolder {where}: no {' and no '.join(m + '/' for m in missing)} folder found (top-level entries: "
        f"{', '.join(have) or 'none'}); expected {where}/train/<class>/<image> and {where}/test/<class>/<image>"
    )


def _classes(names: list[str], prefix: str, where: str) -> dict[str, list[str]]:
    """class -> sorted image member names under ``prefix`` (``.../train/``)."""
    found: dict[str, list[str]] = {}
    for n in names:
        if not n.startswith(prefix):
            continue
        parts = n[len(prefix) :].split("/")
        if len(parts) < 2 or parts[0].startswith("."):
            continue  # a file directly in train/, or a hidden folder
        files = found.setdefault(parts[0], [])
        if _is_image(n):
            files.append(n)
    if not found:
        raise FileNotFoundError(f"imagefolder {where}: no class folders inside")
    for cls, files in sorted(found.items()):
        if not files:
            raise ValueError(
                f"imagefolder {where}/{cls}: empty class folder (no files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        files.sort()
    return dict(sorted(found.items()))


def _decode_all(tree: _Zip | _Folder, files: list[str], where: Path) -> torch.Tensor:
    """uint8 (N, C, H, W): every image decoded with the channel mode of the first one, sizes checked."""
    with warnings.catch_warnings():
        # torchvision >= 0.29 warns on every decode call that its decoders move to TorchCodec; they still
        # work, and 60,000 warnings would cost more than the decoding
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        return _decode_loop(tree, files, where)


def _decode_loop(tree: _Zip | _Folder, files: list[str], where: Path) -> torch.Tensor:
    first = _decode(tree, files[0], ImageReadMode.UNCHANGED, where)
    mode = ImageReadMode.GRAY if first.shape[0] == 1 else ImageReadMode.RGB
    out = torch.empty((len(files), 1 if mode == ImageReadMode.GRAY else 3, *first.shape[1:]), dtype=torch.uint8)
    for i, name in enumerate(files):  # decoded once, then cached: the loop is not a hot path
        img = _decode(tree, name, mode, where)
        if img.shape != out.shape[1:]:
            raise ValueError(
                f"imagefolder {where}/{name}: image is {tuple(img.shape)} (C, H, W) but {where}/{files[0]} is "
                f"{tuple(out.shape[1:])}; all images must share one size"
            )
        out[i] = img
    return out


def _decode(tree: _Zip | _Folder, name: str, mode: ImageReadMode, where: Path) -> torch.Tensor:
    try:
        return decode_image(tree.read(name), mode=mode)
    except RuntimeError as e:
        raise ValueError(f"imagefolder {where}/{name}: corrupt or unreadable image ({e})") from e


def list_classes(path: Path) -> list[str]:
    """The class names of ``path``'s train/ split, from the listing alone (a zip's central directory):
    the checks of :func:`decode_imagefolder` that need no image decoded."""
    try:
        tree: _Zip | _Folder = _Zip(path, read=False) if path.is_file() else _Folder(path)
        names = tree.names()
    except OSError as e:
        raise OSError(e.errno, f"imagefolder: cannot read ({e.strerror})", str(path)) from e
    root = _find_root(names, path)
    return list(_classes(names, f"{root}train/", f"{path}/{root}train"))


def image_shape(path: Path) -> tuple[int, tuple[int, int, int]]:
    """(number of classes, (C, H, W) of the images) of ``path``, decoding one image: the shape
    :func:`decode_imagefolder` gives every image (1 channel for grayscale, else 3) when they all share it."""
    tree: _Zip | _Folder = _Zip(path, read=False) if path.is_file() else _Folder(path)  # the listing, one member
    names = tree.names()
    root = _find_root(names, path)
    classes = _classes(names, f"{root}train/", f"{path}/{root}train")
    first = next(iter(classes.values()))[0]
    data = tree.read(first) if isinstance(tree, _Folder) else torch.frombuffer(bytearray(tree.zf.read(first)),
                                                                                dtype=torch.uint8)
    try:
        img = decode_image(data, mode=ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise ValueError(f"imagefolder {path}/{first}: corrupt or unreadable image ({e})") from e
    return len(classes), (1 if img.shape[0] == 1 else 3, int(img.shape[1]), int(img.shape[2]))


def decode_imagefolder(path: Path) -> dict[str, Any]:
    """Decode both splits: ``{"classes", "train_images", "train_labels", "test_images", "test_labels"}``."""
    if not path.exists():
        raise FileNotFoundError(f"imagefolder {path}: no such folder or zip file")
    tree: _Zip | _Folder = _Zip(path) if path.is_file() else _Folder(path)
    names = tree.names()
    root = _find_root(names, path)
    per_split = {s: _classes(names, f"{root}{s}/", f"{path}/{root}{s}") for s in SPLITS}
    train_cls, test_cls = list(per_split["train"]), list(per_split["test"])
    if train_cls != test_cls:
        only_train = sorted(set(train_cls) - set(test_cls))
        only_test = sorted(set(test_cls) - set(train_cls))
        raise ValueError(
            f"imagefolder {path}: train/ and test/ have different class folders "
            f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'})"
        )
    rec: dict[str, Any] = {"classes": train_cls}
    for s, classes in per_split.items():
        files = [f for c in classes.values() for f in c]
        rec[f"{s}_images"] = _decode_all(tree, files, path)
        counts = torch.tensor([len(c) for c in classes.values()])
        rec[f"{s}_labels"] = torch.repeat_interleave(torch.arange(len(classes)), counts)
    if rec["train_images"].shape[1:] != rec["test_images"].shape[1:]:
        raise ValueError(
            f"imagefolder {path}: train images are {tuple(rec['train_images'].shape[1:])} but test images are "
            f"{tuple(rec['test_images'].shape[1:])} (C, H, W)"
        )
    return rec
