"""BatchFeed: batches from uint8 tensors kept on the training device (airbench-style).

The images are moved to the device once. Each epoch draws, from a CPU generator seeded by (seed, epoch),
a permutation and every augmentation parameter of the epoch at once; batch i is then a slice of those, so
``epoch(e, start=k)`` reproduces exactly the tail of a full epoch (resume mid-epoch) and the same numbers
come out on any device. Crop and flip are one index_select on the whole uint8 batch; normalisation is
two in-place ops on the float conversion. No DataLoader, no workers, no per-sample Python.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from archrelax.utils import resolve_device

_PAD_MODES = ("zero", "reflect")


@dataclass(frozen=True)
class _Augment:
    pad: int = 0  # random crop: pad by `pad`, then crop back to (H, W) at a random offset
    pad_mode: str = "zero"
    flip: bool = False  # random horizontal flip with probability 1/2


def parse_augment(augment: str | Sequence[str]) -> _Augment:
    """``("crop", "flip")``; ``"crop"`` = ``"crop:4"`` (zero padding); ``"crop:4:reflect"``; ``"flip"``."""
    if isinstance(augment, str):
        augment = [a for a in augment.replace(",", " ").split() if a]
    pad, mode, flip = 0, "zero", False
    for item in augment:
        name, *opts = str(item).split(":")
        if name == "flip" and not opts:
            flip = True
        elif name == "crop" and len(opts) <= 2:
            try:
                pad = int(opts[0]) if opts else 4
            except ValueError:
                pad = -1
            mode = opts[1] if len(opts) > 1 else "zero"
            if pad < 1 or mode not in _PAD_MODES:
                raise ValueError(f"augment {item!r}: expected crop[:PAD[:{'|'.join(_PAD_MODES)}]] with PAD >= 1")
        else:
            raise ValueError(f"unknown augment {item!r}; valid: 'flip', 'crop', 'crop:PAD', 'crop:PAD:reflect'")
    return _Augment(pad, mode, flip)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for (seed, epoch); hashing keeps nearby pairs' streams unrelated."""
    digest = hashlib.sha256(f"archrelax-feed:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BatchFeed:
    """Normalised float batches ``(x (B, C, H, W) float32, y (B,) int64)`` on ``device``.

    ``mean``/``std`` are per-channel in [0, 1] pixel units (``DataSplits.mean/std``); ``augment`` as in
    :func:`parse_augment` (the paper's seed uses none).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: torch.Tensor | Sequence[float],
        std: torch.Tensor | Sequence[float],
        device: str | torch.device | None = None,
        shuffle: bool = True,
        seed: int = 0,
        augment: str | Sequence[str] = (),
        drop_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"BatchFeed images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"BatchFeed labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"BatchFeed batch_size {batch_size!r} must be a positive int")
        n, c = images.shape[:2]
        if drop_last and batch_size > n:
            raise ValueError(f"BatchFeed batch_size {batch_size} > {n} images with drop_last=True gives no batch")
        self.device = resolve_device(device)
        self.images = images.to(self.device)  # once; batches are gathered on the device
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, int(seed), drop_last
        self.augment = parse_augment(augment)
        if self.augment.pad >= min(images.shape[2:]):
            raise ValueError(
                f"BatchFeed crop padding {self.augment.pad} must be smaller than the image size {tuple(images.shape[2:])}"
            )
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != c or std_t.numel() != c:
            raise ValueError(
                f"BatchFeed mean/std need {c} values (one per channel), got {mean_t.numel()} and {std_t.numel()}"
            )
        if (std_t <= 0).any():
            raise ValueError(f"BatchFeed std {std_t.tolist()} must be positive")
        # x = (u / 255 - mean) / std = u * scale + shift
        self._scale = (1.0 / (255.0 * std_t)).reshape(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).reshape(1, c, 1, 1).to(self.device)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The epoch's order and augmentation draws (N each), drawn in a fixed sequence from one generator."""
        n, aug = self.images.shape[0], self.augment
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        dy = dx = flip = None
        if aug.pad:
            dy = torch.randint(0, 2 * aug.pad + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * aug.pad + 1, (n,), generator=g)
        if aug.flip:
            flip = torch.rand(n, generator=g) < 0.5
        to = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
        return to(order), to(dy), to(dx), to(flip)

    def epoch(self, e: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of epoch ``e`` from batch index ``start`` on (``start = len(feed)`` yields nothing)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"BatchFeed.epoch start {start} must be between 0 and {len(self)} (batches per epoch)")
        return self._batches(e, start)  # a separate generator, so a bad start fails here, not at first next()

    def _batches(self, e: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, dy, dx, flip = self._plan(e)
        bs = self.batch_size
        for i in range(start, len(self)):
            idx = order[i * bs : (i + 1) * bs]
            # index_select: ~20x faster than images[idx] on CPU for uint8 rows
            x = self.images.index_select(0, idx)
            x = self._augment(x, idx_slice=slice(i * bs, i * bs + idx.shape[0]), dy=dy, dx=dx, flip=flip)
            yield x.float().mul_(self._scale).add_(self._shift), self.labels.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def _augment(self, x: torch.Tensor, *, idx_slice: slice, dy, dx, flip) -> torch.Tensor:
        """Random crop and/or flip of a uint8 batch (B, C, H, W) as one flat ``index_select``.

        Zero padding pads the batch (a cheap uint8 copy) and reads windows of it; reflect padding reads
        mirrored indices of the unpadded batch. Per-row/column source indices are (B, H)/(B, W); the flat
        index broadcasts them over channels. On CPU this is ~3x faster than two ``gather`` calls and ~20x
        faster than four-tensor advanced indexing.
        """
        aug = self.augment
        if not aug.pad and not aug.flip:
            return x
        b, c, h, w = x.shape
        p = aug.pad
        rows = torch.arange(h, device=x.device).expand(b, h)  # (B, H) source row of each output row
        cols = torch.arange(w, device=x.device).expand(b, w)  # (B, W)
        if aug.flip:
            cols = torch.where(flip[idx_slice, None], (w - 1) - cols, cols)
        src = x
        if p:
            rows = rows + dy[idx_slice, None]  # in padded coordinates: offsets 0..2p
            cols = cols + dx[idx_slice, None]
            if aug.pad_mode == "zero":
                src = torch.nn.functional.pad(x, (p, p, p, p))
            else:  # back to unpadded coordinates, mirrored about the edge pixel like F.pad(mode="reflect")
                rows, cols = rows - p, cols - p
                rows = torch.where(rows < 0, -rows, torch.where(rows > h - 1, 2 * (h - 1) - rows, rows))
                cols = torch.where(cols < 0, -cols, torch.where(cols > w - 1, 2 * (w - 1) - cols, cols))
        sh, sw = src.shape[2:]
        plane = torch.arange(b * c, device=x.device).view(b, c, 1, 1) * (sh * sw)  # start of each (b, c) plane
        flat = plane + (rows * sw)[:, None, :, None] + cols[:, None, None, :]  # (B, C, H, W)
        return src.reshape(-1).index_select(0, flat.view(-1)).view(b, c, h, w)
