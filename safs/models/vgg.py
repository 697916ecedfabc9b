"""VGG-11 / VGG-16 with batch norm, CIFAR style (one linear classifier)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from safs.activations import ActivationSlot
from safs.models.registry import register_model

# Conv widths; "M" is a 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(
        self, cfg: list[int | str], num_classes: int, input_shape: tuple[int, int, int],
        activation: str, width: float = 1.0,
    ):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = input_shape[0]
        conv_index = pool_index = 0
        for item in cfg:
            if item == "M":
                pool_index += 1
                # ceil_mode keeps odd sizes (28 -> 14 -> 7 -> 4 ...) and 1x1 maps
                # alive, so 28x28 and 8x8 inputs pass all five pools.
                layers[f"pool{pool_index}"] = nn.MaxPool2d(2, ceil_mode=True)
            else:
                conv_index += 1
                channels = max(1, round(int(item) * width))
                layers[f"conv{conv_index}"] = nn.Conv2d(in_channels, channels, 3, padding=1)
                layers[f"bn{conv_index}"] = nn.BatchNorm2d(channels)
                layers[f"act{conv_index}"] = ActivationSlot(activation)
                in_channels = channels
        # Slot names: features.act1 ... features.actN.
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model("vgg11", "relu", "VGG-11 with BN, CIFAR style (one linear classifier)")
def build_vgg11(
    num_classes: int, input_shape: tuple[int, int, int], activation: str | None = None, *, width: float = 1.0
) -> nn.Module:
    """``width`` scales every conv's channels (0.25: a CPU-sized VGG)."""
    if not width > 0:
        raise ValueError(f"model.options.width: must be > 0 (got {width})")
    return VGG(CONFIGS["vgg11"], num_classes, input_shape, activation or "relu", width)


@register_model("vgg16", "relu", "VGG-16 with BN, CIFAR style (one linear classifier)")
def build_vgg16(
    num_classes: int, input_shape: tuple[int, int, int], activation: str | None = None, *, width: float = 1.0
) -> nn.Module:
    """``width`` scales every conv's channels (0.25: a CPU-sized VGG)."""
    if not width > 0:
        raise ValueError(f"model.options.width: must be > 0 (got {width})")
    return VGG(CONFIGS["vgg16"], num_classes, input_shape, activation or "relu", width)
