"""Data: sources (real CIFAR-10 JPEG zip, torchvision CIFAR folders, mnist5k, image folders), the uint8
cache, subsets and statistics, every bad-source error, and BatchFeed determinism / resume / augmentation."""
from __future__ import annotations

import io
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from archrelax.data import BatchFeed, DataSplits, data_shape, load_data
from archrelax.data.splits import channel_stats, stratified_subset

# torchvision >= 0.29 deprecates its image codecs (moving to TorchCodec); the tests' own encode_png calls warn
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

_DEFAULT_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"  # shared/ beside the repo
CIFAR_ZIP = Path(os.environ.get("ARCHRELAX_CIFAR10_ZIP", _DEFAULT_ZIP))
needs_zip = pytest.mark.skipif(not CIFAR_ZIP.exists(), reason=f"{CIFAR_ZIP} not present")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("archrelax-cache")


# ------------------------------------------------------------------------------------------ real CIFAR-10


@pytest.fixture(scope="session")
def cifar_zip_splits(cache_dir):
    """The whole zip decoded once per session into the session's cache (the first load is the slow one)."""
    return load_data(f"imagefolder:{CIFAR_ZIP}", cache_dir=cache_dir)


@needs_zip
def test_cifar10_zip_full_decode_and_cached_reload(cifar_zip_splits, cache_dir):
    d = cifar_zip_splits
    assert d.train.images.shape == (50000, 3, 32, 32) and d.test.images.shape == (10000, 3, 32, 32)
    assert d.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.equal(d.train.labels.bincount(), torch.full((10,), 5000))
    assert torch.equal(d.test.labels.bincount(), torch.full((10,), 1000))
    # the well-known CIFAR-10 channel means (the JPEG re-encoding moves them by < 0.005)
    assert torch.allclose(d.mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=5e-3)
    t = time.perf_counter()
    again = load_data(f"imagefolder:{CIFAR_ZIP}", cache_dir=cache_dir)
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, f"cached CIFAR-10 load took {elapsed:.2f}s"
    assert torch.equal(again.train.images, d.train.images) and torch.equal(again.test.labels, d.test.labels)
    assert torch.equal(again.mean, d.mean) and torch.equal(again.std, d.std)


@needs_zip
def test_cifar10_zip_subset_is_stratified_and_seeded(cifar_zip_splits, cache_dir):
    a = load_data(f"imagefolder:{CIFAR_ZIP}", cache_dir=cache_dir, train_size=5000, test_size=1000, seed=1)
    b = load_data(f"imagefolder:{CIFAR_ZIP}", cache_dir=cache_dir, train_size=5000, test_size=1000, seed=1)
    c = load_data(f"imagefolder:{CIFAR_ZIP}", cache_dir=cache_dir, train_size=5000, seed=2)
    assert torch.equal(a.train.labels.bincount(), torch.full((10,), 500))
    assert torch.equal(a.test.labels.bincount(), torch.full((10,), 100))
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    mean, std = channel_stats(a.train.images)
    assert torch.equal(a.mean, mean) and not torch.equal(a.mean, cifar_zip_splits.mean)
    # every subset image is one of the full set's, with its label
    full = cifar_zip_splits.train
    idx = stratified_subset(full.labels, 5000, 2, 10)  # seed 2 -> train stream 2*2
    assert not torch.equal(idx, stratified_subset(full.labels, 5000, 4, 10))
    assert torch.equal(c.train.images, full.images[stratified_subset(full.labels, 5000, 4, 10)])


@pytest.fixture(scope="session")
def real_jpegs():
    """A few real CIFAR-10 JPEG bytes per class and split, from the zip (or skip)."""
    if not CIFAR_ZIP.exists():
        pytest.skip(f"{CIFAR_ZIP} not present")
    out: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        for name in z.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[3].endswith(".jpg"):
                files = out.setdefault((parts[1], parts[2]), [])
                if len(files) < (8 if parts[1] == "train" else 3):
                    files.append((parts[3], z.read(name)))
    return out


def _write_tree(root: Path, jpegs) -> Path:
    for (split, cls), files in jpegs.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for fname, data in files:
            (root / split / cls / fname).write_bytes(data)
    return root


def _zip_tree(src: Path, dst: Path, top: str = "") -> Path:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, top + p.relative_to(src).as_posix())
    return dst


def test_imagefolder_folder_and_deflated_zip_agree(real_jpegs, tmp_path):
    folder = _write_tree(tmp_path / "small", real_jpegs)
    zipped = _zip_tree(folder, tmp_path / "small.zip", top="small/")  # nested one level, compressed members
    a = load_data(f"imagefolder:{folder}", cache_dir=tmp_path / "c")
    b = load_data("imagefolder:small.zip", root=tmp_path, cache_dir=tmp_path / "c")  # relative to root
    assert a.train.images.shape == (80, 3, 32, 32) and a.test.images.shape == (30, 3, 32, 32)
    assert a.classes == b.classes and len(a.classes) == 10
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.float().std() > 20  # real pictures, not blank


# ------------------------------------------------------------------------------------- small image folders


def _png(arr: np.ndarray) -> bytes:
    from torchvision.io import encode_png

    return encode_png(torch.from_numpy(arr)).numpy().tobytes()


def _make_folder(root: Path, classes=("a", "b", "c"), n_train=4, n_test=2, size=8, channels=3, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (channels, size, size), dtype=np.uint8)
                (root / split / cls / f"{i:03d}.png").write_bytes(_png(img))
    return root


def test_imagefolder_png_pixels_labels_and_ignored_files(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / ".DS_Store").write_text("x")
    d = load_data(f"imagefolder:{root}", cache_dir=tmp_path / "c")
    assert d.classes == ["a", "b", "c"] and d.input_shape == (3, 8, 8) and d.num_classes == 3
    assert d.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    from torchvision.io import decode_png

    first = decode_png(torch.frombuffer(bytearray((root / "train/b/000.png").read_bytes()), dtype=torch.uint8))
    assert torch.equal(d.train.images[4], first)


def test_grayscale_folder_gives_one_channel(tmp_path):
    d = load_data(f"imagefolder:{_make_folder(tmp_path / 'g', channels=1)}", cache_dir=tmp_path / "c")
    assert d.train.images.shape == (12, 1, 8, 8) and d.mean.shape == (1,)


def test_data_shape_is_what_load_data_gives_without_decoding(tmp_path, monkeypatch):
    gray = _make_folder(tmp_path / "g", channels=1, size=6, classes=("a", "b"))
    zipped = _zip_tree(_make_folder(tmp_path / "rgb", size=5), tmp_path / "rgb.zip", top="rgb/")
    cifar = tmp_path / "data"
    _write_cifar(cifar, hundred=True)
    cases = [("mnist5k", None), ("synthetic:2x9x7:4:8:4", None), (f"imagefolder:{gray}", None),
             ("imagefolder:rgb.zip", tmp_path), ("cifar100", cifar)]
    want = {}
    for source, root in cases:
        d = load_data(source, root=root, cache_dir=tmp_path / "c")
        want[source] = (len(d.classes), tuple(d.train.images.shape[1:]))
    import archrelax.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "_decode_all", None)  # decoding the data set would fail: data_shape must not
    assert {source: data_shape(source, root) for source, root in cases} == want
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_shape(f"imagefolder:{tmp_path / 'missing'}")


def test_cache_hit_identical_and_invalidated_by_changes(tmp_path):
    root = _make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    a = load_data(f"imagefolder:{root}", cache_dir=cache)
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 1
    rec = torch.load(files[0], weights_only=True)  # plain tensors and lists: no code executed to load
    assert rec["train_images"].dtype == torch.uint8
    b = load_data(f"imagefolder:{root}", cache_dir=cache)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert a.classes == b.classes and torch.equal(a.std, b.std)
    # a new image changes the source's identity -> a new cache entry with it
    (root / "train" / "a" / "999.png").write_bytes(_png(np.zeros((3, 8, 8), np.uint8)))
    c = load_data(f"imagefolder:{root}", cache_dir=cache)
    assert len(c.train) == 13 and len(sorted(cache.glob("*.pt"))) == 2
    # a truncated cache file is decoded again, with a warning
    newest = max(cache.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        d = load_data(f"imagefolder:{root}", cache_dir=cache)
    assert torch.equal(d.train.images, c.train.images)


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHRELAX_CACHE", str(tmp_path / "envcache"))
    load_data(f"imagefolder:{_make_folder(tmp_path / 'ds')}")
    assert len(list((tmp_path / "envcache").glob("imagefolder-ds-*.pt"))) == 1


# ------------------------------------------------------------------------------------------------ errors


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'} does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nope'}", cache_dir=tmp_path)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_missing_split_folder(tmp_path, missing):
    root = _make_folder(tmp_path / "ds")
    for p in sorted((root / missing).rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / missing).rmdir()
    with pytest.raises(FileNotFoundError, match=rf"{root}: no {missing}/ folder found"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path)


def test_empty_class_folder(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "train" / "d").mkdir()
    (root / "train" / "d" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=rf"{root}/train/d: empty class folder"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path)


def test_corrupt_image_is_named(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "test" / "b" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"test/b/001\.png: corrupt or unreadable image"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path)


def test_corrupt_image_in_zip_is_named(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "train" / "c" / "002.png").write_bytes(b"garbage")
    z = _zip_tree(root, tmp_path / "ds.zip")
    with pytest.raises(ValueError, match=r"ds\.zip/train/c/002\.png: corrupt"):
        load_data(f"imagefolder:{z}", cache_dir=tmp_path)


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"plain text")
    with pytest.raises(ValueError, match="not a readable zip"):
        load_data(f"imagefolder:{tmp_path / 'x.zip'}", cache_dir=tmp_path)


def test_mismatched_class_lists(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "test" / "c").rename(root / "test" / "z")
    with pytest.raises(ValueError, match=r"different class folders \(only in train: \['c'\]; only in test: \['z'\]\)"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path)


def test_mixed_image_sizes(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "train" / "b" / "001.png").write_bytes(_png(np.zeros((3, 9, 8), np.uint8)))
    with pytest.raises(ValueError, match=r"train/b/001\.png: image is \(3, 9, 8\)"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path)


def test_bad_source_names_and_options(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data source 'cifar11'.*mnist5k"):
        load_data("cifar11")
    with pytest.raises(ValueError, match="synthetic"):
        load_data("synthetic:3x32:10")
    with pytest.raises(ValueError, match=r"train_size 4001 .* between 1 and 4000"):
        load_data("mnist5k", train_size=4001, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------- torchvision CIFAR


def _write_cifar(root: Path, hundred: bool, n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """The official python layout with synthetic arrays: pickled dicts of (n, 3072) uint8 rows."""
    rng = np.random.default_rng(seed)
    k = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    batches = {"train": ["train"], "test": ["test"]} if hundred else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    arrays = {}
    for split, names in batches.items():
        data, labels = [], []
        for name in names:
            x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = rng.integers(0, k, n).tolist()
            (folder / name).write_bytes(pickle.dumps({"data": x, label_key: y}))
            data.append(x), labels.extend(y)
        arrays[split] = np.concatenate(data).reshape(-1, 3, 32, 32)
        arrays[split + "_labels"] = np.array(labels)
    names = [f"c{i}" for i in range(k)]
    meta = {"fine_label_names": names, "coarse_label_names": []} if hundred else {"label_names": names}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))
    return arrays


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_torchvision_cifar_folder_from_synthetic_arrays(tmp_path, source):
    arrays = _write_cifar(tmp_path / "data", hundred=source == "cifar100")
    d = load_data(source, root=tmp_path / "data", cache_dir=tmp_path / "c")
    assert len(d.classes) == (100 if source == "cifar100" else 10) and d.classes[3] == "c3"
    assert torch.equal(d.train.images, torch.from_numpy(arrays["train"]))  # CHW rows, as pickled
    assert torch.equal(d.test.labels, torch.from_numpy(arrays["test_labels"]))
    assert len(d.train) == (6 if source == "cifar100" else 30) and len(d.test) == 6
    # the batches folder itself is accepted as root too
    sub = "cifar-100-python" if source == "cifar100" else "cifar-10-batches-py"
    e = load_data(source, root=tmp_path / "data" / sub, cache_dir=tmp_path / "c")
    assert torch.equal(e.test.images, d.test.images)


def _covering_prefix(labels: np.ndarray) -> int:
    """The length of the shortest prefix of ``labels`` holding every class that ``labels`` holds."""
    return max(int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)) + 1


def test_first_subset_is_the_stored_order_of_both_splits(tmp_path):
    """subset='first' takes the first N of each split as the files hold them (the paper's data_size), whatever
    data_seed; one image fewer than the shortest prefix with every class is refused, naming the missing class."""
    arrays = _write_cifar(tmp_path / "data", hundred=False)
    m_train, m_test = _covering_prefix(arrays["train_labels"]), _covering_prefix(arrays["test_labels"])
    kw = dict(root=tmp_path / "data", cache_dir=tmp_path / "c", subset="first")
    d = load_data("cifar10", train_size=m_train, test_size=m_test, seed=3, **kw)
    assert torch.equal(d.train.images, torch.from_numpy(arrays["train"][:m_train]))
    assert torch.equal(d.test.labels, torch.from_numpy(arrays["test_labels"][:m_test]))
    e = load_data("cifar10", train_size=m_train, test_size=m_test, seed=0, **kw)
    assert torch.equal(e.train.images, d.train.images) and torch.equal(e.test.images, d.test.images)
    mean, std = channel_stats(d.train.images)  # statistics of the subset, as for a stratified one
    assert torch.equal(d.mean, mean) and torch.equal(d.std, std)
    missing = int(arrays["train_labels"][m_train - 1])
    with pytest.raises(ValueError, match=rf"train_size={m_train - 1} with subset 'first': .*lack class\(es\) "
                       rf"\[{missing}\].*use subset 'stratified'"):
        load_data("cifar10", train_size=m_train - 1, **kw)
    strat = load_data("cifar10", train_size=m_train, root=tmp_path / "data", cache_dir=tmp_path / "c")
    assert len(strat.train) == m_train  # the default is the stratified subset, as before


def test_first_subset_of_a_class_sorted_folder_is_refused(tmp_path):
    root = _make_folder(tmp_path / "ds")  # stored class by class: a, a, a, a, b, ...
    with pytest.raises(ValueError, match=r"first 6 images lack class\(es\) \[2\] of the split's 3.*imagefolder"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path / "c", train_size=6, subset="first")
    d = load_data(f"imagefolder:{root}", cache_dir=tmp_path / "c", train_size=6)  # stratified: every class
    assert d.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match=r"subset 'random' is not valid; allowed: stratified, first"):
        load_data(f"imagefolder:{root}", cache_dir=tmp_path / "c", train_size=6, subset="random")


def test_cifar_missing_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCHRELAX_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_1.*download=True"):
        load_data("cifar10", root=tmp_path / "empty", cache_dir=tmp_path)
    assert not (tmp_path / "empty").exists()  # nothing downloaded or created without permission


def test_cifar_corrupt_batch_names_folder(tmp_path):
    _write_cifar(tmp_path / "data", hundred=False)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"cannot read the train batches in .*cifar-10-batches-py"):
        load_data("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------ mnist5k, synthetic


def test_mnist5k_offline_split(tmp_path):
    d = load_data("mnist5k", cache_dir=tmp_path)
    assert isinstance(d, DataSplits) and d.name == "mnist5k"
    assert d.train.images.shape == (4000, 1, 28, 28) and d.test.images.shape == (1000, 1, 28, 28)
    assert d.classes == [str(i) for i in range(10)]
    assert torch.equal(d.train.labels.bincount(), torch.full((10,), 400))
    assert torch.equal(d.test.labels.bincount(), torch.full((10,), 100))
    assert d.train.images.max() == 255 and 0.1 < float(d.mean) < 0.15  # MNIST's mean is ~0.13
    # the split is fixed: a fresh decode (another cache) gives the same test set
    e = load_data("mnist5k", cache_dir=tmp_path / "other")
    assert torch.equal(d.test.images, e.test.images)


def test_synthetic_is_deterministic_and_configurable():
    a = load_data("synthetic:1x28x28:4:40:12")
    b = load_data("synthetic:1x28x28:4:40:12")
    assert a.train.images.shape == (40, 1, 28, 28) and a.test.images.shape == (12, 1, 28, 28)
    assert a.classes == ["class0", "class1", "class2", "class3"]
    assert torch.equal(a.train.images, b.train.images)
    assert load_data("synthetic").train.images.shape == (1000, 3, 32, 32)


def test_channel_stats_exact():
    x = torch.randint(0, 256, (50, 2, 5, 7), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=16)
    f = x.double() / 255
    assert torch.allclose(mean.double(), f.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(std.double(), f.transpose(0, 1).reshape(2, -1).std(1, unbiased=False), atol=1e-6)


def test_stratified_subset_keeps_proportions():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_subset(labels, 10, seed=0, num_classes=3)
    assert labels[idx].bincount().tolist() == [6, 3, 1]
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 10
    assert labels[stratified_subset(labels, 11, 0, 3)].bincount().tolist() == [7, 3, 1]


# ------------------------------------------------------------------------------------------------ BatchFeed


@pytest.fixture(scope="module")
def small():
    return load_data("synthetic:3x8x8:5:53:10")


def _feed(d, **kw):
    kw = {"batch_size": 8, "mean": d.mean, "std": d.std, "device": "cpu", "seed": 3, **kw}
    return BatchFeed(d.train.images, d.train.labels, **kw)


def _denorm(x, d):
    return (x * d.std.view(1, -1, 1, 1) + d.mean.view(1, -1, 1, 1)) * 255


def test_feed_epoch_is_a_seeded_permutation(small):
    f = _feed(small)
    assert len(f) == 7 and len(_feed(small, drop_last=True)) == 6
    batches = list(f.epoch(0))
    assert [len(y) for _, y in batches] == [8] * 6 + [5]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (53, 3, 8, 8)
    # every image exactly once, normalised with the given statistics
    restored = _denorm(x, small).round().to(torch.uint8)
    key = lambda t: sorted(map(bytes, t.reshape(len(t), -1).numpy()))  # noqa: E731
    assert key(restored) == key(small.train.images)
    again = list(_feed(small).epoch(0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = torch.cat([y for _, y in f.epoch(1)])
    assert not torch.equal(other, torch.cat([y for _, y in batches]))
    assert not torch.equal(torch.cat([y for _, y in _feed(small, seed=4).epoch(0)]), torch.cat([y for _, y in batches]))
    ordered = torch.cat([y for _, y in _feed(small, shuffle=False).epoch(5)])
    assert torch.equal(ordered, small.train.labels)


@pytest.mark.parametrize("augment", [(), ("crop", "flip"), ("crop:2:reflect",)])
def test_feed_resume_mid_epoch_equals_tail(small, augment):
    f = _feed(small, augment=augment)
    full = list(f.epoch(4))
    tail = list(_feed(small, augment=augment).epoch(4, start=3))
    assert len(tail) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], tail))
    assert list(f.epoch(4, start=len(f))) == []
    with pytest.raises(ValueError, match="start 8 must be between 0 and 7"):
        f.epoch(0, start=8)


def test_feed_augmentation_is_seeded_crop_and_flip(small):
    plain = torch.cat([x for x, _ in _feed(small).epoch(2)])
    flip = torch.cat([x for x, _ in _feed(small, augment=("flip",)).epoch(2)])
    # same permutation: each flipped image is the plain one or its mirror, and both occur
    same = (flip == plain).flatten(1).all(1)
    mirrored = (flip == plain.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 53
    crop = torch.cat([x for x, _ in _feed(small, augment=("crop:2",)).epoch(2)])
    crop2 = torch.cat([x for x, _ in _feed(small, augment="crop:2").epoch(2)])
    assert torch.equal(crop, crop2)
    # each crop is an 8x8 window of the zero-padded (black) plain image
    raw = torch.nn.functional.pad(_denorm(plain, small).round(), (2, 2, 2, 2))
    got = _denorm(crop, small).round()
    windows = raw.unfold(2, 8, 1).unfold(3, 8, 1)  # (N, C, 5, 5, 8, 8)
    match = (windows == got[:, :, None, None]).all(-1).all(-1).all(1)  # (N, 5, 5)
    assert bool(match.flatten(1).any(1).all())
    assert int((~match[:, 2, 2]).sum()) > 30  # most images really moved


def test_feed_errors(small):
    with pytest.raises(ValueError, match="unknown augment 'rotate'"):
        _feed(small, augment=("rotate",))
    with pytest.raises(ValueError, match="crop"):
        _feed(small, augment=("crop:0",))
    with pytest.raises(ValueError, match="batch_size 0"):
        _feed(small, batch_size=0)
    with pytest.raises(ValueError, match="one per channel"):
        _feed(small, mean=[0.5], std=[0.5])


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_feed_crop_flip_matches_padded_reference(mode):
    """The gather-based crop+flip equals F.pad then slicing then flipping, image by image."""
    x = torch.randint(0, 256, (40, 3, 9, 7), dtype=torch.uint8)
    f = BatchFeed(x, torch.arange(40), 16, mean=[0.0] * 3, std=[1 / 255] * 3, device="cpu",
                  augment=(f"crop:3:{mode}", "flip"), seed=5)
    order, dy, dx, flip = f._plan(2)
    got = torch.cat([b for b, _ in f.epoch(2)]).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x.float(), (3, 3, 3, 3), mode="constant" if mode == "zero" else "reflect")
    ref = torch.stack([padded[o, :, dy[i] : dy[i] + 9, dx[i] : dx[i] + 7] for i, o in enumerate(order.tolist())])
    ref = torch.where(flip[:, None, None, None], ref.flip(3), ref).to(torch.uint8)
    assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="padding 7 must be smaller than the image size"):
        BatchFeed(x, torch.arange(40), 16, mean=[0.0] * 3, std=[1.0] * 3, device="cpu", augment=("crop:7",))


def test_cli_data_and_models_commands(capsys, tmp_path):
    import argparse

    from archrelax.data import _cli as data_cli
    from archrelax.models import _cli as models_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    data_cli.register(sub), models_cli.register(sub)
    args = parser.parse_args(["data", "synthetic:1x28x28:3:30:9", "--train-size", "12", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "12 train / 9 test images of shape (1, 28, 28)" in out and "3 classes" in out
    args = parser.parse_args(["models"])
    assert args.func(args) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"vanilla_cnn", "alexnet", "fcn", "lcn"} <= set(names)
