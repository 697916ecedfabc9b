"""The activation operator: an ``nn.Module`` (class or zero-argument factory) whose
``forward(x, alpha, beta)`` applies the slot's output scale ``alpha`` and input scale ``beta``."""

from __future__ import annotations

from torch import Tensor, nn


class SoftSign(nn.Module):
    """``alpha * z / (1 + |z|)`` with ``z = beta * x``."""

    def forward(self, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        z = beta * x
        return alpha * z / (1 + z.abs())
