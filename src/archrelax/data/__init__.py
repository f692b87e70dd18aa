"""Data: ``load_data(source, ...) -> DataSplits`` of uint8 tensors, and ``BatchFeed`` to train from them.

Sources (see :mod:`archrelax.data.sources`): ``"mnist5k"`` (offline default), ``"cifar10"``, ``"cifar100"``,
``"imagefolder:PATH"``, ``"synthetic[:CxHxW[:CLASSES[:N_TRAIN[:N_TEST]]]]"``. Decoded once into a uint8
tensor cache (``$ARCHRELAX_CACHE`` or ``~/.cache/archrelax``), so later loads take well under a second.
"""
from __future__ import annotations

import os
from pathlib import Path

from .cache import cached, default_cache_dir
from .feed import BatchFeed, parse_augment
from .splits import SUBSETS, DataSplits, ImageSet, channel_stats, first_subset, stratified_subset
from .sources import MIN_CLASSES, check, check_classes, default_data_root, resolve, shape

__all__ = ["load_data", "check_data", "data_shape", "DataSplits", "ImageSet", "BatchFeed", "parse_augment", "default_cache_dir", "default_data_root"]


def _download_allowed(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    return os.environ.get("ARCHRELAX_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def load_data(
    source: str = "mnist5k",
    root: str | os.PathLike | None = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    subset: str = "stratified",
    cache_dir: str | os.PathLike | None = None,
    download: bool | None = None,
) -> DataSplits:
    """Load ``source`` as uint8 train/test tensors, optionally subsetted, with training-split statistics.

    ``root``: data folder for cifar10/cifar100 (default ``$ARCHRELAX_DATA`` or ``~/.cache/archrelax/datasets``)
    and the base of a relative ``imagefolder:PATH``. ``train_size``/``test_size``: subsets chosen as ``subset``
    says: ``"stratified"`` (class proportions kept, by a permutation seeded by ``seed``, see
    :func:`stratified_subset`) or ``"first"`` (the first N of each split in the source's stored order, as the
    paper's code takes them; ``seed`` unused, see :func:`first_subset`).
    ``download``: fetch cifar10/100 when missing (default: only if ``$ARCHRELAX_DOWNLOAD=1``); never otherwise.
    ``mean``/``std`` are per channel in [0, 1] units, from the (subset) training split.
    """
    if not isinstance(source, str):
        raise TypeError(f"data source must be a string, got {type(source).__name__}")
    if subset not in SUBSETS:
        raise ValueError(f"data {source!r}: subset {subset!r} is not valid; allowed: {', '.join(SUBSETS)}")
    name, key, decode = resolve(source, root, _download_allowed(download))
    if key is None:
        rec = decode()
    else:
        rec = cached(name, key, lambda: _with_stats(decode()), Path(cache_dir) if cache_dir is not None else None)
    classes = list(rec["classes"])
    check_classes(source, classes)
    splits = {}
    for split, size, offset in (("train", train_size, 0), ("test", test_size, 1)):
        images, labels = rec[f"{split}_images"], rec[f"{split}_labels"]
        if size is not None:
            if not isinstance(size, int) or not 0 < size <= len(labels):
                raise ValueError(f"{split}_size {size!r} for {source!r} must be an int between 1 and {len(labels)}")
            if subset == "first":
                try:
                    idx = first_subset(labels, size, len(classes))
                except ValueError as e:
                    raise ValueError(f"data {source!r}, {split}_size={size} with subset 'first': {e}") from None
            else:  # test subsets use another stream than train so both are not the same positions
                idx = stratified_subset(labels, size, seed * 2 + offset, len(classes))
            images, labels = images.index_select(0, idx), labels.index_select(0, idx)  # faster than [idx]
        splits[split] = ImageSet(images, labels)
    if train_size is not None and splits["train"].labels.unique().numel() < MIN_CLASSES:
        raise ValueError(f"data {source!r}: train_size={train_size} keeps a single class of {len(classes)}; "
                         f"classification needs at least {MIN_CLASSES}: use a larger train_size")
    if train_size is None and "train_mean" in rec:
        mean, std = rec["train_mean"], rec["train_std"]  # computed once at decode time
    else:
        mean, std = channel_stats(splits["train"].images)
    return DataSplits(splits["train"], splits["test"], classes, mean, std, name=source)


def check_data(source: str, root: str | os.PathLike | None = None, *, download: bool | None = None) -> None:
    """Raise the error ``load_data(source, root)`` would raise for a missing, unreadable or malformed source,
    without decoding it: cheap enough to check every data set of an experiment before any run starts."""
    if not isinstance(source, str):
        raise TypeError(f"data source must be a string, got {type(source).__name__}")
    check(source, root, _download_allowed(download))


def data_shape(source: str, root: str | os.PathLike | None = None) -> tuple[int, tuple[int, int, int]]:
    """``(number of classes, (C, H, W))`` of ``source``'s images, as :func:`load_data` would give them, without
    decoding the data set (nor writing its cache)."""
    if not isinstance(source, str):
        raise TypeError(f"data source must be a string, got {type(source).__name__}")
    return shape(source, root)


def _with_stats(rec: dict) -> dict:
    rec["train_mean"], rec["train_std"] = channel_stats(rec["train_images"])
    return rec
