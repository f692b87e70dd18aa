"""Spatial-size arithmetic for conv/pool stacks, so bad input sizes fail before any tensor is built."""
from __future__ import annotations

from typing import Sequence

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


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` -> ``(32, 32)``."""
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"input_size {size!r} must be an int or a pair of ints (H, W)")
