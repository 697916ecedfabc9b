"""LeNet-5 (no batch norm), as used by SAFS for MNIST."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from safs.activations import ActivationSlot
from safs.models.registry import register_model

# Inputs at least this large use unpadded convolutions (the classic LeNet-5; 28x28
# gives a 16x4x4 = 256 flatten, as in the original). Smaller inputs (8x8 digits)
# would shrink to nothing, so they get "same" padding instead.
_UNPADDED_MIN_SIZE = 28


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], activation: str):
        super().__init__()
        channels, height, width = input_shape
        padding = 0 if min(height, width) >= _UNPADDED_MIN_SIZE else 2
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5, padding=padding)
        self.act1 = ActivationSlot(activation)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=padding)
        self.act2 = ActivationSlot(activation)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        # The flatten size depends on the input size; measure it instead of
        # re-deriving the conv/pool arithmetic.
        with torch.no_grad():
            self.flat_features = self._features(torch.zeros(1, *input_shape)).shape[1]
        self.fc1 = nn.Linear(self.flat_features, 120)
        self.act3 = ActivationSlot(activation)
        self.fc2 = nn.Linear(120, 84)
        self.act4 = ActivationSlot(activation)
        self.fc3 = nn.Linear(84, num_classes)

    def _features(self, x: Tensor) -> Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.flatten(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self._features(x)
        x = self.act3(self.fc1(x))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5", "relu", "LeNet-5 (2 conv + 3 fc, no BN), any input size")
def build_lenet5(
    num_classes: int, input_shape: tuple[int, int, int], activation: str | None = None
) -> nn.Module:
    return LeNet5(num_classes, input_shape, activation or "relu")
