"""Conv/pool stacks: their building block, and the spatial-size arithmetic that makes a bad input size fail
with the smallest valid one named, before the classifier (whose size it gives) is built."""
from __future__ import annotations

from typing import Sequence

from torch import nn

Size = int | tuple[int, int]  # an input size: square side or (H, W)
# one stage: (module path, kernel, stride, padding)
Stage = tuple[str, int, int, int]


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv/pool along one dimension (dilation 1, floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def trace(size: int, stages: Sequence[Stage]) -> tuple[int, str | None]:
    """Final length, or (<=0, path of the first stage whose output would be empty)."""
    for path, k, s, p in stages:
        size = out_size(size, k, s, p)
        if size <= 0:
            return size, path
    return size, None


def check_input_size(model: str, hw: tuple[int, int], stages: Sequence[Stage]) -> tuple[int, int]:
    """Output (H, W) of ``stages`` for input ``hw``; a clear ValueError when a stage would reach 0×0."""
    out = []
    for size in hw:
        final, bad = trace(size, stages)
        if bad is not None:
            smallest = next(s for s in range(1, 4096) if trace(s, stages)[1] is None)
            raise ValueError(
                f"{model}: input size {hw[0]}x{hw[1]} is too small: {bad} would output an empty map; "
                f"the smallest valid input size is {smallest}"
            )
        out.append(final)
    return out[0], out[1]


def conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, *, pool: bool = True
               ) -> list[nn.Module]:
    """conv(kernel, stride, padding) → ReLU (→ maxpool 3/2): the stage both seed-code CNNs are made of."""
    layers = [nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=padding), nn.ReLU()]
    return layers + [nn.MaxPool2d(kernel_size=3, stride=2)] if pool else layers


def stages(features: nn.Sequential, prefix: str = "features") -> list[Stage]:
    """The size-changing stages of a conv/pool stack, read from its modules (square kernels, strides and
    paddings): ``("features.3 (conv2)", 5, 1, 2)``. So a model states its layers once, where it builds them."""
    out, count = [], {"conv": 0, "pool": 0}
    for i, m in enumerate(features):
        kind = "conv" if isinstance(m, nn.Conv2d) else "pool" if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) else None
        if kind is None:
            continue
        count[kind] += 1
        k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
        out.append((f"{prefix}.{i} ({kind}{count[kind]})", k, s, p))
    return out


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` -> ``(32, 32)``."""
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"input_size {size!r} must be an int or a pair of ints (H, W)")
