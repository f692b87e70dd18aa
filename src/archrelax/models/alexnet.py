"""The CIFAR AlexNet of the paper's seed code.

conv 64 k4 s2 p2 → ReLU → pool 3/2 → conv 192 k5 p2 → ReLU → pool 3/2 → conv 384 k3 p1 → ReLU
→ conv 256 k3 p1 → ReLU → conv 256 k3 p1 → ReLU → pool 3/2, then
dropout → linear 256→512 → ReLU → dropout → linear 512→512 → ReLU → linear 512→classes.
``width`` scales the conv channels (64, 192, 384, 256, 256 at the default 64); the hidden layers stay 512.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model
from ._shapes import Size, check_input_size, conv_block, pair, stages


class AlexNet(nn.Module):
    def __init__(
        self,
        *,
        width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: Size = 32,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"alexnet: width={width}, num_classes={num_classes}, in_channels={in_channels} must be >= 1"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"alexnet: dropout={dropout} must be in [0, 1)")
        h, w = pair(input_size)
        self.input_shape = (in_channels, h, w)
        c1, c2, c3, c4 = width, width * 3, width * 6, width * 4  # 64, 192, 384, 256
        self.features = nn.Sequential(  # features.0, .3, .6, .8, .10: the convs
            *conv_block(in_channels, c1, 4, stride=2, padding=2),
            *conv_block(c1, c2, 5, padding=2),
            *conv_block(c2, c3, 3, padding=1, pool=False),
            *conv_block(c3, c4, 3, padding=1, pool=False),
            *conv_block(c4, c4, 3, padding=1),
        )
        oh, ow = check_input_size("alexnet", (h, w), stages(self.features))  # before any classifier
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c4 * oh * ow, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, 4*width, oh, ow) -> (B, num_classes)
        return self.classifier(self.features(x).flatten(1))


@register_model("alexnet")
def alexnet(
    *, width: int = 64, num_classes: int = 10, in_channels: int = 3, input_size: Size = 32, dropout: float = 0.5
) -> AlexNet:
    """The paper's CIFAR AlexNet: 5 convs (64-192-384-256-256 at width 64), 3 pools, dropout MLP 512-512."""
    return AlexNet(
        width=width, num_classes=num_classes, in_channels=in_channels, input_size=input_size, dropout=dropout
    )
