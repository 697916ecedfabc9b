"""Searchable activation functions: the operator library and activation slots."""

from safs.activations.operators import (
    OPERATORS,
    ScaledFunction,
    create_operator,
    list_operators,
    register_operator,
)
from safs.activations.slot import (
    ActivationSlot,
    apply_genome,
    genome,
    replace_activations,
    set_scales_trainable,
    slots,
)

__all__ = [
    "OPERATORS",
    "ActivationSlot",
    "ScaledFunction",
    "apply_genome",
    "create_operator",
    "genome",
    "list_operators",
    "register_operator",
    "replace_activations",
    "set_scales_trainable",
    "slots",
]
