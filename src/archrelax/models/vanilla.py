"""VanillaCNN: the three-conv network of the paper's seed code (its "SkinnyCNN").

conv(width, k4 s2 p2) → ReLU → maxpool 3/2 → conv(width, k5 p2) → ReLU → maxpool 3/2
→ conv(width, k3 p1) → ReLU → maxpool 3/2 → linear to the classes. All layers have biases; no dropout.
On 32×32 inputs the spatial sizes are 32 → 17 → 8 → 8 → 3 → 3 → 1, so the classifier sees ``width`` features.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model
from ._shapes import Size, check_input_size, pair

# (path, kernel, stride, padding) of every size-changing stage, in order
_STAGES = [
    ("features.0 (conv1)", 4, 2, 2),
    ("features.2 (pool1)", 3, 2, 0),
    ("features.3 (conv2)", 5, 1, 2),
    ("features.5 (pool2)", 3, 2, 0),
    ("features.6 (conv3)", 3, 1, 1),
    ("features.8 (pool3)", 3, 2, 0),
]


class VanillaCNN(nn.Module):
    def __init__(
        self, *, width: int = 64, num_classes: int = 10, in_channels: int = 3, input_size: Size = 32
    ) -> None:
        super().__init__()
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"vanilla_cnn: width={width}, num_classes={num_classes}, in_channels={in_channels} must be >= 1"
            )
        h, w = pair(input_size)
        oh, ow = check_input_size("vanilla_cnn", (h, w), _STAGES)
        self.input_shape = (in_channels, h, w)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=4, stride=2, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(width, width, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(nn.Linear(width * oh * ow, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, width, oh, ow) -> (B, num_classes)
        return self.classifier(self.features(x).flatten(1))


@register_model("vanilla_cnn")
def vanilla_cnn(
    *, width: int = 64, num_classes: int = 10, in_channels: int = 3, input_size: Size = 32
) -> VanillaCNN:
    """The paper's VanillaCNN: 3 convs (k4 s2, k5, k3) of `width` channels, each ReLU + maxpool 3/2, linear."""
    return VanillaCNN(width=width, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
