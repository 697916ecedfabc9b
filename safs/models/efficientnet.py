"""EfficientNet-B0 for small inputs (CIFAR, ImageNet16): stride-1 stem, 16 MBConv blocks.

Default activation is ``swish`` (``alpha * sigmoid(beta * x) * x``), as in SAFS.

Option ``stride2_residual`` (default false): the original SAFS model adds the block's own
pre-gate output at stride 2, ``out·w + out`` (its shortcut at stride 2 is ``out`` itself);
by default a stride-2 block has no residual (``out·w``), as in EfficientNet proper.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from safs.activations import ActivationSlot
from safs.models.registry import register_model

# (expansion, out_channels, blocks, stride of the first block)
B0_STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 2),
    (6, 24, 2, 1),
    (6, 40, 2, 2),
    (6, 80, 3, 2),
    (6, 112, 3, 1),
    (6, 192, 4, 2),
    (6, 320, 1, 2),
]
STEM_CHANNELS = 32
SE_REDUCTION = 16


class SqueezeExcitation(nn.Module):
    """Channel gate on the block output: pool -> fc1 -> act slot -> fc2 -> sigmoid.

    The sigmoid is a gate, not a searchable activation, so it is functional
    (and ``replace_activations`` would not touch it either).
    """

    def __init__(self, channels: int, activation: str):
        super().__init__()
        hidden = max(1, channels // SE_REDUCTION)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = ActivationSlot(activation)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.sigmoid(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * w


class MBConv(nn.Module):
    """expand 1x1 -> BN -> act -> depthwise 3x3 -> BN -> act -> project 1x1 -> BN -> SE,
    plus a residual when the stride is 1 (and, with ``stride2_residual``, the pre-gate
    output itself at stride 2)."""

    def __init__(
        self, in_channels: int, out_channels: int, expansion: int, stride: int, activation: str,
        stride2_residual: bool = False,
    ):
        super().__init__()
        hidden = in_channels * expansion
        # The expansion conv exists even for expansion 1 (as in the SAFS model), so
        # every block has the same three slots.
        self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = ActivationSlot(activation)
        self.depthwise = nn.Conv2d(
            hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False
        )
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = ActivationSlot(activation)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels, activation)

        # Residual x at stride 1; a 1x1 conv + BN matches channels when they differ. At stride 2
        # x has the wrong size; the original adds the block's own pre-gate output instead.
        self.stride2_residual = stride != 1 and stride2_residual
        self.has_residual = stride == 1 or self.stride2_residual
        if stride == 1 and in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            ))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.expand(x)))
        out = self.act2(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        gated = self.se(out)
        if self.stride2_residual:
            return gated + out  # out·w + out
        if self.has_residual:
            return gated + self.shortcut(x)
        return gated


class EfficientNetB0(nn.Module):
    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], activation: str,
        stride2_residual: bool = False,
    ):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(input_shape[0], STEM_CHANNELS, 3, 1, padding=1, bias=False),
            bn=nn.BatchNorm2d(STEM_CHANNELS),
            act=ActivationSlot(activation),
        ))
        blocks = []
        in_channels = STEM_CHANNELS
        for expansion, out_channels, n, stride in B0_STAGES:
            for i in range(n):
                blocks.append(
                    MBConv(in_channels, out_channels, expansion, stride if i == 0 else 1, activation,
                           stride2_residual)
                )
                in_channels = out_channels
        # Slot names: stem.act, blocks.<i>.act1, blocks.<i>.act2, blocks.<i>.se.act.
        self.blocks = nn.Sequential(*blocks)
        # Deviation from the original, whose classifier needed exactly a 1x1 map
        # (32x32 inputs): adaptive pooling lets any input size through.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(self.flatten(self.pool(x)))


@register_model(
    "efficientnet_b0",
    "swish",
    "EfficientNet-B0 for small inputs (stride-1 stem, SE on block output)",
)
def build_efficientnet_b0(
    num_classes: int, input_shape: tuple[int, int, int], activation: str | None = None, *,
    stride2_residual: bool = False,
) -> nn.Module:
    """``stride2_residual``: stride-2 blocks output ``out·w + out``, as the original SAFS model."""
    if not isinstance(stride2_residual, bool):
        raise ValueError(f"model.options.stride2_residual: must be true or false (got {stride2_residual!r})")
    return EfficientNetB0(num_classes, input_shape, activation or "swish", stride2_residual)
