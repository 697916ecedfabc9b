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


# --------------------------------------------------------------------------- effective weights
# Training-time methods (STR, ST-3, DNW) compute the weight a layer uses from its stored one.
# ``reparametrize`` swaps the layer's class in place for a subclass whose ``forward`` calls
# ``effective_weight()``: parameter objects and names stay as they are (so the optimizer and
# ``state_dict`` keys are unaffected), and ``plain`` swaps the class back at finalize.

_REPARAM_CLASSES: dict[tuple[type, type], type] = {}


class ReparamLayer:
    """Mixin for an ``nn.Conv2d`` / ``nn.Linear`` whose forward uses ``effective_weight()``."""

    _plain_class: type

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight()
        if isinstance(self, nn.Conv2d):
            return self._conv_forward(input, weight, self.bias)
        return nn.functional.linear(input, weight, self.bias)


def reparametrize(module: nn.Module, mixin: type) -> bool:
    """Make ``module`` use ``mixin.effective_weight``; False if it already does."""
    if isinstance(module, mixin):
        return False
    if isinstance(module, ReparamLayer):
        raise ValueError(f"{type(module).__name__} is already reparametrised by another method")
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"only Conv2d and Linear layers can be reparametrised, not {type(module).__name__}")
    base = type(module)
    cls = _REPARAM_CLASSES.get((mixin, base))
    if cls is None:
        cls = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"_plain_class": base})
        _REPARAM_CLASSES[(mixin, base)] = cls
    module.__class__ = cls
    return True


def plain(module: nn.Module) -> None:
    """Undo ``reparametrize`` (the caller removes its extra parameters and buffers)."""
    if isinstance(module, ReparamLayer):
        module.__class__ = module._plain_class


def straight_through(weight: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward, identity gradient to ``weight`` (exactly ``value``, no rounding)."""
    if torch.is_grad_enabled() and weight.requires_grad:
        return value.detach() + (weight - weight.detach())
    return value


def has_pruned(model: nn.Module) -> bool:
    """Whether any layer carries a mask with a pruned entry (a model an earlier stage sparsified)."""
    return any(not bool(getattr(m, MASK).all()) for m in masked_layers(model).values())


@torch.no_grad()
def export_layer(module: nn.Module, extras: tuple[str, ...] = ()) -> None:
    """Finalize one layer in place: ``weight`` := its effective weight, the method's ``extras``
    (parameters or buffers) removed, the plain class back, ``weight_mask`` = the non-zeros
    (within the layer's current mask, if it has one)."""
    weight = module.effective_weight() if isinstance(module, ReparamLayer) else module.weight
    weight = weight.detach().clone()
    for name in extras:
        if hasattr(module, name):
            delattr(module, name)
    plain(module)
    mask = weight != 0
    if hasattr(module, MASK):
        mask &= getattr(module, MASK)
    module.weight.copy_(weight)
    set_mask(module, mask)
