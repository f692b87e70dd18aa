"""In-memory image sets: uint8 images with int64 labels, subsets and normalisation statistics."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSet.labels must be int64 ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class DataSplits:
    train: ImageSet
    test: ImageSet
    classes: list[str]
    mean: torch.Tensor  # float32 (C,), of the training split in [0, 1] pixel units (uint8 / 255)
    std: torch.Tensor  # float32 (C,)
    name: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what to pass to a model factory."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_subset(labels: torch.Tensor, size: int, seed: int, num_classes: int) -> torch.Tensor:
    """Indices (sorted) of ``size`` samples keeping the class proportions, chosen by a seeded permutation.

    Class c gets floor(size * n_c / N) samples plus one for the classes with the largest remainders (ties to
    the lower class index); within a class the first ones of a ``torch.randperm`` seeded by ``seed`` win.
    """
    n = labels.shape[0]
    if not 0 < size <= n:
        raise ValueError(f"subset size {size} must be between 1 and the split's {n} images")
    if size == n:
        return torch.arange(n)
    counts = torch.bincount(labels, minlength=num_classes)
    exact = counts.double() * size / n
    quota = exact.floor().long()
    rest = size - int(quota.sum())
    if rest:
        # largest remainders first; stable sort keeps lower class indices first among ties
        order = torch.sort(-(exact - quota), stable=True).indices
        quota[order[:rest]] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    by_class = torch.sort(labels[perm], stable=True)  # groups perm by class, keeping perm order inside
    sorted_labels, pos = by_class.values, by_class.indices
    starts = torch.cumsum(counts, 0) - counts  # first position of each class in the grouped order
    rank = torch.arange(n) - starts[sorted_labels]  # rank of each sample inside its class
    keep = perm[pos[rank < quota[sorted_labels]]]
    return torch.sort(keep).values


SUBSETS = ("stratified", "first")  # how a subset size picks its images (load_data's ``subset``)


def first_subset(labels: torch.Tensor, size: int, num_classes: int) -> torch.Tensor:
    """Indices ``0 .. size - 1``: the first ``size`` samples in the stored order, as the paper's code takes
    ``data_size`` images (the first batch of an unshuffled loader). For cifar10/cifar100 that order is the
    official files' (classes mixed); an ImageFolder stores class by class, where the first N would hold few
    classes, so a subset that lacks a class of its split is refused rather than trained on another task.
    """
    n = labels.shape[0]
    if not 0 < size <= n:
        raise ValueError(f"subset size {size} must be between 1 and the split's {n} images")
    present = torch.bincount(labels, minlength=num_classes) > 0
    kept = torch.bincount(labels[:size], minlength=num_classes) > 0
    missing = (present & ~kept).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"the first {size} images lack class(es) {missing} of the split's "
                         f"{int(present.sum())}: its stored order is not mixed (an imagefolder is stored class by "
                         "class) or the subset is too small; use subset 'stratified' (class proportions kept)")
    return torch.arange(size)


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (population) of uint8 images (N, C, H, W), in [0, 1] units.

    Exact: a 256-bin histogram per channel (integer counts), then moments in float64 — about 4x faster on
    CPU than summing a float64 copy, and no large temporary.
    """
    c = images.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        block = images[i : i + chunk]
        for ch in range(c):  # per channel, not per sample
            hist[ch] += torch.bincount(block[:, ch].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = hist.sum(1)
    mean = (hist * values).sum(1) / n
    var = (hist * values.square()).sum(1) / n - mean.square()
    return mean.float(), var.clamp_min(0).sqrt().float()
