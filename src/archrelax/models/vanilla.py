"""VanillaCNN: the three-conv network of the paper's seed code (its "SkinnyCNN").

conv(width, k4 s2 p2) → ReLU → maxpool 3/2 → conv(width, k5 p2) → ReLU → maxpool 3/2
→ conv(width, k3 p1) → ReLU → maxpool 3/2 → linear to the classes. All layers have biases; no dropout.
On 32×32 inputs the spatial sizes are 32 → 17 → 8 → 8 → 3 → 3 → 1, so the classifier sees ``width`` features.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model
from ._shapes import Size, check_input_size, conv_block, pair, stages


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
        self.input_shape = (in_channels, h, w)
        self.features = nn.Sequential(  # features.0, .3, .6: the convs (each + ReLU + maxpool 3/2)
            *conv_block(in_channels, width, 4, stride=2, padding=2),
            *conv_block(width, width, 5, padding=2),
            *conv_block(width, width, 3, padding=1),
        )
        oh, ow = check_input_size("vanilla_cnn", (h, w), stages(self.features))  # before any classifier
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
