"""Continuous relaxation of activation slots for one-shot activation search.

A :class:`MixtureSlot` stands where an :class:`~safs.activations.slot.ActivationSlot` stood and
computes a weighted sum of every operator of the search space, each applied with the slot's
shared scales: ``sum_k w_k * op_k(x, alpha, beta)``, with each operator's input and output
clamped to ``±BOUND`` (see there). The weights come from one vector of
architecture logits per slot:

* ``softmax``: ``w = softmax(logits)``;
* ``gumbel``: in training, ``w = softmax((logits + g) / tau)`` with fresh Gumbel noise ``g``
  per forward pass and a temperature ``tau`` the caller anneals; in evaluation, the noiseless
  ``softmax(logits)``.

The recorded operator weights of a slot are always ``softmax(logits)``, and discretizing a
slot keeps the operator with the largest logit (hence the largest recorded weight), together
with that operator's trained intrinsic parameters and the slot's alpha and beta.

Architecture logits are the only parameters named ``arch_logits``; :func:`arch_parameters`
and :func:`weight_parameters` split a model's parameters into the two sets, so the two
optimizers of the search never share a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safs.activations.operators import create_operator
from safs.activations.slot import ActivationSlot, slots

RELAXATIONS = ("softmax", "gumbel")
LOGITS = "arch_logits"
# Inside a mixture every operator sees its input clamped to ±BOUND, and its output is clamped
# to ±BOUND too. Both are needed. The input clamp keeps an exponential operator finite (symexp's
# exp overflows fp32 at |x| > 88), so the output clamp's backward is 0 · finite, not 0 · inf
# = NaN. The output clamp keeps it small: at the uniform weights a search starts from, symexp
# alone gave a slot output of exp(50) / 13 ~ 4e20 on a pruned LeNet-5 (pre-activations of ~20
# after its second layer), every later slot repeated it, the loss was ~1e20 from the first step,
# and the backward through the chain of exponentials overflowed to NaN within two epochs. One
# such operator on its own only makes a poor candidate; inside the mixture it is the network.
# ±50 leaves the benign operators alone at the scales a trained network has.
# The price: inside the mixture symexp saturates at ±50, a useful function there, while on
# its own it is unbounded, so a search can favour it and hand on a genome that diverges when
# retrained (see the README's one-shot benchmark).
BOUND = 50.0


class MixtureSlot(nn.Module):
    """A slot whose operator is a learned mixture over ``choices``."""

    def __init__(self, choices: Sequence[str], relaxation: str = "softmax", *,
                 alpha: nn.Parameter | None = None, beta: nn.Parameter | None = None):
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {relaxation!r}; accepted: {', '.join(RELAXATIONS)}")
        if not choices:
            raise ValueError("a mixture needs at least one operator")
        self.choices = tuple(choices)
        self.relaxation = relaxation
        self.alpha = alpha if alpha is not None else nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.beta = beta if beta is not None else nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.ops = nn.ModuleList(create_operator(c) for c in self.choices)
        self.arch_logits = nn.Parameter(torch.zeros(len(self.choices)))
        self.tau = 1.0  # the Gumbel temperature; a plain float, set by the training loop

    def mixture_weights(self) -> Tensor:
        """The operator weights as recorded and discretized: ``softmax(logits)``."""
        return F.softmax(self.arch_logits, dim=0)

    def _forward_weights(self) -> Tensor:
        if self.relaxation == "gumbel" and self.training:
            return F.gumbel_softmax(self.arch_logits, tau=self.tau, hard=False)
        return self.mixture_weights()

    def forward(self, x: Tensor) -> Tensor:
        w = self._forward_weights().to(x.dtype)
        x = x.clamp(-BOUND, BOUND)
        out = None
        for k, op in enumerate(self.ops):
            term = w[k] * op(x, self.alpha, self.beta).clamp(-BOUND, BOUND)
            out = term if out is None else out + term
        return out

    def selected(self) -> str:
        return self.choices[int(torch.argmax(self.arch_logits.detach()))]

    def extra_repr(self) -> str:
        return f"choices={list(self.choices)!r}, relaxation={self.relaxation!r}"


def mixture_slots(model: nn.Module) -> dict[str, MixtureSlot]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MixtureSlot)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def to_mixture(model: nn.Module, choices: Sequence[str], relaxation: str = "softmax") -> list[str]:
    """Replace every activation slot of ``model`` in place by a mixture over ``choices`` (the
    slot's alpha and beta are kept, shared by all operators); returns the slot names.

    An operator of the mixture that the slot already had keeps that operator's trained
    intrinsic parameters; the others start fresh. The logits start at zero (uniform weights)."""
    names = []
    for name, slot in slots(model).items():
        if not name:
            raise ValueError("the model itself is an activation slot; nothing to mix into")
        mix = MixtureSlot(choices, relaxation, alpha=slot.alpha, beta=slot.beta)
        if slot.op_name in mix.choices:
            mix.ops[mix.choices.index(slot.op_name)] = slot.op
        mix.to(device=slot.alpha.device, dtype=slot.alpha.dtype)
        _replace(model, name, mix)
        names.append(name)
    return names


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The architecture logits of every mixture slot."""
    return [m.arch_logits for m in mixture_slots(model).values()]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable parameter that is not an architecture logit."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in arch]


def set_tau(model: nn.Module, tau: float) -> None:
    for m in mixture_slots(model).values():
        m.tau = float(tau)


def annealed_tau(epoch: int, epochs: int, tau_start: float, tau_end: float) -> float:
    """Geometric annealing from ``tau_start`` (first epoch) to ``tau_end`` (last epoch)."""
    if epochs <= 1:
        return float(tau_end)
    return float(tau_start * (tau_end / tau_start) ** (epoch / (epochs - 1)))


@torch.no_grad()
def mixture_table(model: nn.Module) -> list[dict]:
    """``[{slot, operator, weight}]`` for every slot and operator, in slot then choice order."""
    rows = []
    for name, m in mixture_slots(model).items():
        for op, w in zip(m.choices, m.mixture_weights().float().cpu().tolist()):
            rows.append({"slot": name, "operator": op, "weight": float(w)})
    return rows


def selected_genome(model: nn.Module) -> dict[str, str]:
    """Each mixture slot's operator with the largest weight."""
    return {name: m.selected() for name, m in mixture_slots(model).items()}


def discretize(model: nn.Module) -> dict[str, str]:
    """Replace every mixture slot of ``model`` in place by a plain slot with its selected
    operator (trained intrinsic parameters, alpha and beta kept); returns the genome."""
    out = {}
    for name, m in mixture_slots(model).items():
        op = m.selected()
        slot = ActivationSlot(op)
        slot.alpha, slot.beta = m.alpha, m.beta
        slot.op = m.ops[m.choices.index(op)]
        _replace(model, name, slot)
        out[name] = op
    return out
