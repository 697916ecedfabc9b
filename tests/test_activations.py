"""Operators and activation slots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from safs.activations import (
    OPERATORS,
    ActivationSlot,
    apply_genome,
    create_operator,
    genome,
    list_operators,
    replace_activations,
    set_scales_trainable,
    slots,
)

# Reference formulas written out independently of the implementation.
# Each takes (x, alpha, beta, op_module) so intrinsic parameters can be read.
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def _softplus(z: Tensor) -> Tensor:
    return torch.log(1 + torch.exp(z))


def _sigmoid(z: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-z))


REFERENCE = {
    "relu": lambda x, a, b, op: a * torch.where(b * x > 0, b * x, 0.0),
    "relu6": lambda x, a, b, op: a * torch.clamp(b * x, 0.0, 6.0),
    "hardswish": lambda x, a, b, op: a * (b * x) * torch.clamp(b * x + 3, 0.0, 6.0) / 6,
    "gelu": lambda x, a, b, op: a * 0.5 * (b * x) * (1 + torch.erf(b * x / math.sqrt(2))),
    "elu": lambda x, a, b, op: a * torch.where(b * x > 0, b * x, torch.exp(b * x) - 1),
    "tanh": lambda x, a, b, op: a * torch.tanh(b * x),
    "softplus": lambda x, a, b, op: a * _softplus(b * x),
    "logsigmoid": lambda x, a, b, op: a * torch.log(_sigmoid(b * x)),
    "symlog": lambda x, a, b, op: a * torch.sign(b * x) * torch.log(torch.abs(b * x) + 1),
    "symexp": lambda x, a, b, op: a * torch.sign(b * x) * (torch.exp(torch.abs(b * x)) - 1),
    # The trailing x is NOT scaled by beta (original SAFS formula).
    "swish": lambda x, a, b, op: a * _sigmoid(b * x) * x,
    "tanhsoft1": lambda x, a, b, op: a * torch.tanh(op.p1 * b * x) * _softplus(b * x),
    "acon": lambda x, a, b, op: a * (
        (op.p1 * b * x - op.p2 * b * x) * _sigmoid(op.p3 * (op.p1 * b * x - op.p2 * b * x))
        + op.p2 * b * x
    ),
    "srs": lambda x, a, b, op: a * (b * x) / ((b * x) / op.p1 + torch.exp(-(b * x) / op.p2)),
    "identity": lambda x, a, b, op: a * b * x,
    "silu": lambda x, a, b, op: a * (b * x) * _sigmoid(b * x),
    "mish": lambda x, a, b, op: a * (b * x) * torch.tanh(_softplus(b * x)),
    "selu": lambda x, a, b, op: a * SELU_SCALE * torch.where(
        b * x > 0, b * x, SELU_ALPHA * (torch.exp(b * x) - 1)
    ),
    "sin": lambda x, a, b, op: a * torch.sin(b * x),
    "leaky_relu": lambda x, a, b, op: a * torch.where(b * x > 0, b * x, 0.01 * b * x),
}

INTRINSIC = {"tanhsoft1": ["p1"], "acon": ["p1", "p2", "p3"], "srs": ["p1", "p2"]}

POINTS = torch.tensor([-4.0, -1.5, -0.3, 0.0, 0.25, 1.0, 3.0, 7.0], dtype=torch.float64)


def test_every_builtin_operator_is_registered():
    assert set(REFERENCE) <= set(list_operators())
    assert list_operators() == sorted(list_operators())


def _slot(name: str, alpha: float, beta: float) -> ActivationSlot:
    slot = ActivationSlot(name).double()
    with torch.no_grad():
        slot.alpha.fill_(alpha)
        slot.beta.fill_(beta)
        # Move intrinsic params off 1.0 so a formula that ignores one is caught.
        for i, p in enumerate(slot.op.parameters()):
            p.fill_(1.0 + 0.5 * (i + 1))
    return slot


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.0, 0.5), (-0.7, 1.8)])
def test_operator_matches_formula(name: str, alpha: float, beta: float):
    slot = _slot(name, alpha, beta)
    with torch.no_grad():
        got = slot(POINTS)
        want = REFERENCE[name](POINTS, slot.alpha, slot.beta, slot.op)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_swish_trailing_x_is_unscaled():
    slot = _slot("swish", 2.0, 0.5)
    x = torch.tensor([3.0], dtype=torch.float64)
    assert slot(x).item() == pytest.approx(2.0 * _sigmoid(torch.tensor(1.5)).item() * 3.0)
    # ... so it differs from silu, which scales both factors.
    silu = _slot("silu", 2.0, 0.5)
    assert slot(x).item() != pytest.approx(silu(x).item())


def test_relu_is_default():
    assert ActivationSlot().op_name == "relu"


@pytest.mark.parametrize("name", list_operators())
def test_gradients_finite(name: str):
    slot = ActivationSlot(name)
    set_scales_trainable(slot, True)
    x = torch.linspace(-5, 5, 41).requires_grad_(True)  # includes 0 exactly
    slot(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in slot.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_scales_frozen_by_default_and_unfreezable():
    slot = ActivationSlot("acon")
    assert slot.alpha.shape == () and slot.beta.shape == ()
    assert slot.alpha.item() == 1.0 and slot.beta.item() == 1.0
    assert not slot.alpha.requires_grad and not slot.beta.requires_grad
    slot.set_scales_trainable(True)
    assert slot.alpha.requires_grad and slot.beta.requires_grad
    model = nn.Sequential(ActivationSlot(), ActivationSlot("srs"))
    set_scales_trainable(model, True)
    assert all(s.alpha.requires_grad and s.beta.requires_grad for s in slots(model).values())
    set_scales_trainable(model, False)
    assert not any(s.alpha.requires_grad or s.beta.requires_grad for s in slots(model).values())
    # Intrinsic params stay trainable: the original trained them in every stage.
    assert model[1].op.p1.requires_grad


@pytest.mark.parametrize("name,params", sorted(INTRINSIC.items()))
def test_intrinsic_parameters(name: str, params: list[str]):
    slot = ActivationSlot(name)
    named = dict(slot.op.named_parameters())
    assert sorted(named) == params
    assert all(p.item() == 1.0 and p.requires_grad for p in named.values())
    keys = set(ActivationSlot(name).state_dict())
    assert keys == {"alpha", "beta", *(f"op.{p}" for p in params)}


def test_parameter_free_operators_have_no_params():
    assert list(create_operator("relu").parameters()) == []
    assert set(ActivationSlot("relu").state_dict()) == {"alpha", "beta"}


def test_set_op_keeps_scales_and_dtype():
    slot = ActivationSlot("relu").double()
    with torch.no_grad():
        slot.alpha.fill_(2.0)
        slot.beta.fill_(0.5)
    slot.set_scales_trainable(True)
    slot.set_op("acon")
    assert slot.op_name == "acon" and "acon" in repr(slot)
    assert slot.alpha.item() == 2.0 and slot.beta.item() == 0.5
    assert slot.alpha.requires_grad
    assert slot.op.p1.dtype == torch.float64
    # Fresh intrinsic parameters each time.
    with torch.no_grad():
        slot.op.p1.fill_(3.0)
    slot.set_op("acon")
    assert slot.op.p1.item() == 1.0


def _toy() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 8), ActivationSlot(), nn.Sequential(nn.Linear(8, 8), ActivationSlot("tanh"))
    )


def test_genome_round_trip():
    model = _toy()
    assert genome(model) == {"1": "relu", "2.1": "tanh"}
    assert list(slots(model)) == ["1", "2.1"]
    apply_genome(model, {"1": "acon", "2.1": "swish"})
    assert genome(model) == {"1": "acon", "2.1": "swish"}
    # A genome must be applied before loading a checkpoint that has intrinsic params.
    other = _toy()
    apply_genome(other, genome(model))
    other.load_state_dict(model.state_dict())
    assert "1.op.p3" in model.state_dict()


def test_apply_genome_partial_keeps_unchanged_slots():
    model = _toy()
    apply_genome(model, {"1": "acon"})
    with torch.no_grad():
        model[1].op.p1.fill_(2.0)
    apply_genome(model, {"1": "acon", "2.1": "relu"})  # "1" unchanged: keeps p1
    assert model[1].op.p1.item() == 2.0
    assert genome(model) == {"1": "acon", "2.1": "relu"}


def test_unknown_operator_lists_accepted():
    with pytest.raises(ValueError, match="unknown activation operator 'nope'; accepted: .*relu"):
        create_operator("nope")
    with pytest.raises(ValueError, match="accepted: .*swish"):
        ActivationSlot("nope")


def test_unknown_slot_or_op_in_genome():
    model = _toy()
    with pytest.raises(ValueError, match=r"'9'.*model slots: 1, 2\.1"):
        apply_genome(model, {"9": "relu"})
    with pytest.raises(ValueError, match=r"'2\.1'.*'nope'.*accepted: .*relu"):
        apply_genome(model, {"1": "tanh", "2.1": "nope"})
    assert genome(model) == {"1": "relu", "2.1": "tanh"}  # validated before any change


def test_register_operator_duplicate_rejected():
    from safs.activations import register_operator

    with pytest.raises(ValueError, match="already registered"):
        register_operator("relu")(nn.Identity)
    assert "relu" in OPERATORS


def test_replace_activations_torchvision_keeps_se_gates():
    import torchvision

    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    natives = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.Hardswish))]
    gates = sum(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    assert gates > 0
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert replace_activations(model) is model
    assert not any(isinstance(m, (nn.ReLU, nn.Hardswish)) for m in model.modules())
    assert sum(isinstance(m, nn.Hardsigmoid) for m in model.modules()) == gates
    assert len(slots(model)) == len(natives)
    assert set(genome(model).values()) == {"relu", "hardswish"}
    with torch.no_grad():  # same function as before the replacement
        torch.testing.assert_close(model(x), before)


def test_replace_activations_default_op_and_unreproducible_variants():
    model = nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.2), nn.GELU(), nn.Sigmoid())
    replace_activations(model)
    assert isinstance(model[1], nn.LeakyReLU)  # slope 0.2 has no exact operator
    assert genome(model) == {"2": "gelu"}
    assert isinstance(model[3], nn.Sigmoid)
    replace_activations(model, "tanh")
    assert genome(model) == {"1": "tanh", "2": "gelu"}  # existing slots untouched
    assert isinstance(replace_activations(nn.ReLU()), ActivationSlot)
    with pytest.raises(ValueError, match="accepted"):
        replace_activations(nn.Sequential(nn.ReLU()), "nope")


def test_srs_stays_finite_when_training_shrinks_its_p2():
    """srs's exp(-z / p2) overflowed at p2 = 0.09 on clamped inputs (a one-shot search on
    seed 1 of the quickstart went NaN in its ninth epoch); its equal overflow-free form has
    finite values and gradients there, and the plain formula's values where that is finite."""
    from safs.activations import create_operator

    op = create_operator("srs")
    with torch.no_grad():
        op.p1.fill_(1.46)
        op.p2.fill_(0.09)
    x = torch.linspace(-50, 50, 2001, requires_grad=True)
    one = torch.tensor(1.0)
    y = op(x, one, one)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(op.p1.grad) and torch.isfinite(op.p2.grad)
    with torch.no_grad():
        z = x.detach()
        plain = z / (z / op.p1 + torch.exp(-z / op.p2))
        ok = torch.isfinite(plain)
        torch.testing.assert_close(y.detach()[ok], plain[ok])
