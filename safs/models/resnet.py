"""ResNet-18 with a CIFAR stem (3x3 stride-1 conv, no max-pool) or, with ``stem: imagenet``,
torchvision's (7x7 stride-2 conv, 3x3 stride-2 max-pool) for 224x224 inputs."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from safs.activations import ActivationSlot
from safs.models.registry import register_model


STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN plus a shortcut.

    Standard variant: ``act2(residual + shortcut(x))``.
    SAFS variant (``safs_shortcut=True``, as in the original SAFS code): no
    activation after the addition; the shortcut branch ends in its own slot
    (``shortcut.act``), on the identity too.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, activation: str,
        safs_shortcut: bool,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = ActivationSlot(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

        shortcut: OrderedDict[str, nn.Module] = OrderedDict()
        if stride != 1 or in_channels != out_channels:
            shortcut["conv"] = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            shortcut["bn"] = nn.BatchNorm2d(out_channels)
        if safs_shortcut:
            shortcut["act"] = ActivationSlot(activation)
        # An empty Sequential is the identity.
        self.shortcut = nn.Sequential(shortcut)
        # The standard variant's post-addition activation; absent in the SAFS variant
        # so that both variants have exactly the slots they use.
        self.act2 = None if safs_shortcut else ActivationSlot(activation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        out = out + self.shortcut(x)
        if self.act2 is not None:
            out = self.act2(out)
        return out


class ResNet(nn.Module):
    def __init__(
        self, blocks_per_stage: list[int], num_classes: int, input_shape: tuple[int, int, int],
        activation: str, safs_shortcut: bool = False, stem: str = "cifar",
    ):
        super().__init__()
        if stem == "imagenet":  # 7x7 stride-2 conv, then a 3x3 stride-2 max-pool (after the slot)
            layers = [("conv", nn.Conv2d(input_shape[0], 64, 7, 2, padding=3, bias=False)), ("bn", nn.BatchNorm2d(64)),
                      ("act", ActivationSlot(activation)), ("pool", nn.MaxPool2d(3, 2, padding=1))]
        else:
            layers = [("conv", nn.Conv2d(input_shape[0], 64, 3, 1, padding=1, bias=False)), ("bn", nn.BatchNorm2d(64)),
                      ("act", ActivationSlot(activation))]
        self.stem = nn.Sequential(OrderedDict(layers))
        in_channels = 64
        stages = []
        for width, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks_per_stage):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(
                    in_channels, width, stride if i == 0 else 1, activation, safs_shortcut
                ))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        # Slot names: stem.act, layer<s>.<b>.act1, layer<s>.<b>.act2 | shortcut.act.
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(self.flatten(self.pool(x)))


@register_model(
    "resnet18",
    "relu",
    "ResNet-18, CIFAR stem (option stem: imagenet for torchvision's); option safs_shortcut: "
    "activation on the shortcut (SAFS variant)",
)
def build_resnet18(
    num_classes: int, input_shape: tuple[int, int, int], activation: str | None = None,
    *, safs_shortcut: bool = False, stem: str = "cifar",
) -> nn.Module:
    if not isinstance(safs_shortcut, bool):
        raise ValueError(f"model.options.safs_shortcut: expected true or false, got {safs_shortcut!r}")
    if stem not in STEMS:
        raise ValueError(f"model.options.stem: unknown '{stem}'; accepted: {', '.join(STEMS)}")
    return ResNet([2, 2, 2, 2], num_classes, input_shape, activation or "relu", safs_shortcut, stem)
