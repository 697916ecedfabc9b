"""Activation slots: named, swappable activation positions inside a model.

A slot computes ``alpha * op(beta * x)`` (how exactly is up to the operator, see
:mod:`safs.activations.operators`). Its name is its qualified name in
``model.named_modules()``; a *genome* maps slot names to operator names, which is
what the per-layer activation search mutates.

State-dict layout of a slot ``s``: ``s.alpha``, ``s.beta`` and ``s.op.<intrinsic>``
(e.g. ``s.op.p1`` for ``acon``). The intrinsic keys depend on the operator, so a
checkpoint's genome must be applied with :func:`apply_genome` *before*
``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from safs.activations.operators import OPERATORS, create_operator, list_operators


class ActivationSlot(nn.Module):
    """One activation position with a swappable operator and scalar scales.

    ``alpha`` (output scale) and ``beta`` (input scale) are 0-d parameters set to
    1.0 and frozen by default, so a fresh slot behaves exactly like its operator;
    the search unfreezes them in the stage that tunes them.
    """

    def __init__(self, op: str = "relu"):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.beta = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.op = create_operator(op)
        self.op_name = op

    def forward(self, x: Tensor) -> Tensor:
        # Hot path: no branching on values, no host synchronisation.
        return self.op(x, self.alpha, self.beta)

    def set_op(self, name: str) -> None:
        """Swap the operator; intrinsic parameters start fresh, alpha/beta are kept.

        The new operator is moved to alpha's device/dtype so swapping works on a
        model that was already moved to a GPU or converted to another precision.
        """
        op = create_operator(name)
        self.op = op.to(device=self.alpha.device, dtype=self.alpha.dtype)
        self.op_name = name

    def set_scales_trainable(self, trainable: bool) -> None:
        self.alpha.requires_grad_(trainable)
        self.beta.requires_grad_(trainable)

    def extra_repr(self) -> str:
        return f"op={self.op_name!r}"


def slots(model: nn.Module) -> dict[str, ActivationSlot]:
    """All slots of ``model`` by qualified name, in ``named_modules`` order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ActivationSlot)}


def genome(model: nn.Module) -> dict[str, str]:
    """The model's genome: slot name -> operator name."""
    return {name: slot.op_name for name, slot in slots(model).items()}


def apply_genome(model: nn.Module, genome: Mapping[str, str]) -> None:
    """Set each listed slot's operator; slots not listed are left as they are.

    Slots whose operator already matches are not touched, so their (possibly
    trained) intrinsic parameters survive. Everything is validated before any slot
    changes, so a bad genome leaves the model unmodified.
    """
    model_slots = slots(model)
    unknown = [name for name in genome if name not in model_slots]
    if unknown:
        raise ValueError(
            f"genome names unknown activation slot(s) {', '.join(map(repr, unknown))}; "
            f"model slots: {', '.join(model_slots) or '(none)'}"
        )
    for name, op in genome.items():
        if op not in OPERATORS:
            raise ValueError(
                f"genome slot {name!r}: unknown activation operator {op!r}; "
                f"accepted: {', '.join(list_operators())}"
            )
    for name, op in genome.items():
        slot = model_slots[name]
        if slot.op_name != op:
            slot.set_op(op)


def set_scales_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze alpha/beta of every slot (intrinsic params are unaffected)."""
    for slot in slots(model).values():
        slot.set_scales_trainable(trainable)


# Activation module types replace_activations turns into slots, with the operator
# that reproduces them and a check that the module uses the hyper-parameters that
# operator hard-codes (otherwise replacing it would silently change the network).
# Sigmoid / Hardsigmoid are deliberately absent: in torchvision they are the gates
# of squeeze-excitation blocks, not activations to search over.
_NATIVE_ACTIVATIONS: dict[type[nn.Module], tuple[str, Callable[[nn.Module], bool]]] = {
    nn.ReLU: ("relu", lambda m: True),
    nn.ReLU6: ("relu6", lambda m: True),
    nn.SiLU: ("silu", lambda m: True),
    nn.GELU: ("gelu", lambda m: m.approximate == "none"),
    nn.Hardswish: ("hardswish", lambda m: True),
    nn.ELU: ("elu", lambda m: m.alpha == 1.0),
    nn.Tanh: ("tanh", lambda m: True),
    nn.LeakyReLU: ("leaky_relu", lambda m: m.negative_slope == 0.01),
    nn.Mish: ("mish", lambda m: True),
    nn.SELU: ("selu", lambda m: True),
    nn.Softplus: ("softplus", lambda m: m.beta == 1.0 and m.threshold == 20.0),
}


def _slot_for(module: nn.Module, default_op: str | None) -> ActivationSlot | None:
    entry = _NATIVE_ACTIVATIONS.get(type(module))
    if entry is None:
        return None
    op, matches = entry
    if default_op is not None:
        return ActivationSlot(default_op)
    # A variant we cannot reproduce exactly (e.g. LeakyReLU(0.2)) stays native.
    return ActivationSlot(op) if matches(module) else None


def replace_activations(model: nn.Module, default_op: str | None = None) -> nn.Module:
    """Replace activation *modules* of ``model`` in place by :class:`ActivationSlot`.

    Each slot gets the operator matching the module it replaces, or ``default_op``
    for all when given. Returns the model (or a new slot if ``model`` itself is an
    activation module). Limitations: activations called functionally in
    ``forward`` (``F.relu``) are not seen, and a module instance used at several
    places (torchvision's ResNet blocks reuse one ``relu``) becomes one slot that
    is shared by those places.
    """
    if default_op is not None and default_op not in OPERATORS:
        raise ValueError(
            f"unknown activation operator {default_op!r}; accepted: {', '.join(list_operators())}"
        )
    root = _slot_for(model, default_op)
    if root is not None:
        return root
    # Collect first, then replace, so the module tree is not mutated while iterated.
    targets: list[tuple[nn.Module, str, ActivationSlot]] = []
    for parent in model.modules():
        if isinstance(parent, ActivationSlot):
            continue
        for child_name, child in parent.named_children():
            slot = _slot_for(child, default_op)
            if slot is not None:
                targets.append((parent, child_name, slot))
    for parent, child_name, slot in targets:
        # setattr keeps the child's position in _modules, so Sequential order holds.
        setattr(parent, child_name, slot)
    # Slots are created on the CPU in float32; follow the model's parameters.
    reference = next(model.parameters(), None)
    if reference is not None and targets:
        for _, _, slot in targets:
            slot.to(device=reference.device, dtype=reference.dtype)
    return model
