"""The model: a builder with the signature of safs's own,
``(num_classes, input_shape, activation, **options) -> nn.Module``; every option is a
keyword-only parameter. Each activation is an ``ActivationSlot``, so the activation search
and ``model.activation`` reach it."""

from __future__ import annotations

import math

from torch import nn

from safs.activations import ActivationSlot


def build_tinymlp(num_classes: int, input_shape: tuple[int, int, int], activation: str, *,
                  width: int = 64) -> nn.Module:
    """Two hidden fully-connected layers, any input size"""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        ActivationSlot(activation),
        nn.Linear(width, width),
        ActivationSlot(activation),
        nn.Linear(width, num_classes),
    )


build_tinymlp.default_activation = "relu"  # the operator used when a pipeline names none
