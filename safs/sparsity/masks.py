"""Weight masks as ``weight_mask`` buffers on plain ``nn.Conv2d`` / ``nn.Linear`` modules.

This is the finalized-model contract shared by every method: ``weight`` already holds the
zeros and a boolean ``weight_mask`` buffer says which entries are structurally kept. Because
the buffer is part of ``state_dict``, a pruned checkpoint round-trips through
``torch.load(weights_only=True)``; ``ensure_mask_buffers`` re-creates the buffers on a fresh
model before loading.
"""

from __future__ import annotations

import torch
from torch import nn

MASK = "weight_mask"


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(getattr(m, MASK, None), torch.Tensor)}


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    mask = mask.to(device=module.weight.device, dtype=torch.bool)
    if hasattr(module, MASK):
        getattr(module, MASK).copy_(mask)
    else:
        module.register_buffer(MASK, mask)
    with torch.no_grad():
        module.weight.mul_(mask)


def ensure_mask_buffers(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Register ``weight_mask`` buffers for every mask present in ``state_dict``."""
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        if key.endswith("." + MASK):
            mod = modules.get(key[: -len(MASK) - 1])
            if mod is None:
                raise KeyError(f"checkpoint has a mask for unknown layer '{key}'")
            if not hasattr(mod, MASK):
                mod.register_buffer(MASK, torch.ones_like(value, dtype=torch.bool, device=mod.weight.device))


class MaskKeeper:
    """Keeps masked weights exactly zero during training.

    Gradients are masked before the optimizer step (so momentum and Adam moments never see
    pruned positions) and weights after it (so weight decay or any optimizer cannot revive
    them). Both use one fused ``_foreach_mul_`` per step: no per-layer Python work.
    """

    def __init__(self, model: nn.Module):
        layers = masked_layers(model).values()
        self.weights = [m.weight for m in layers]
        self.masks = [getattr(m, MASK).to(m.weight.dtype) for m in layers]

    def __bool__(self) -> bool:
        return bool(self.weights)

    @torch.no_grad()
    def mask_grads(self) -> None:
        grads = [w.grad for w in self.weights if w.grad is not None]
        if len(grads) == len(self.weights):
            torch._foreach_mul_(grads, self.masks)
        else:
            for w, m in zip(self.weights, self.masks):
                if w.grad is not None:
                    w.grad.mul_(m)

    @torch.no_grad()
    def mask_weights(self) -> None:
        if self.weights:
            torch._foreach_mul_(self.weights, self.masks)
