"""The activation operator library.

Every operator is an ``nn.Module`` whose ``forward(x, alpha, beta)`` returns the
activation with the slot's output scale ``alpha`` and input scale ``beta``
applied. The scales live on the slot (:class:`safs.activations.slot.ActivationSlot`),
not on the operator, so switching operators keeps them; the operator owns only its
*intrinsic* parameters (p1..p3 of ACON-C, SRS, TanhSoft-1).

Operators take the scales as arguments rather than always computing
``alpha * f(beta * x)`` because some formulas of the original SAFS code do not
scale uniformly (``swish`` multiplies by the *unscaled* ``x``).

Installed packages add operators through the ``safs.operators`` entry-point group: the entry
point names a factory (an operator module class, or a zero-argument callable returning one),
imported when the operator is first built (see :mod:`safs.entry_points` and :mod:`safs.plugins`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OperatorFactory = Union[type[nn.Module], Callable[[], nn.Module]]

class _Operators(Mapping[str, OperatorFactory]):
    """name -> factory: the registered operators, then the plugins' (loaded on first use)."""

    def __init__(self) -> None:
        self.registered: dict[str, OperatorFactory] = {}
        self._loaded: dict[str, OperatorFactory] = {}

    def plugins(self) -> dict:
        from safs.entry_points import entries, provider

        return entries("operators", {n: provider(f) for n, f in self.registered.items()})

    def __getitem__(self, name: str) -> OperatorFactory:
        if name in self.registered:
            return self.registered[name]
        if name not in self._loaded:
            plugin = self.plugins()[name]  # KeyError, as a Mapping should
            factory = plugin.load()
            if not callable(factory):
                from safs.entry_points import PluginError

                raise PluginError(f"activation operator '{name}': {plugin.provider} is not a factory")
            self._loaded[name] = factory
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self.registered or (isinstance(name, str) and name in self.plugins())

    def __iter__(self) -> Iterator[str]:
        yield from self.registered
        yield from (n for n in self.plugins() if n not in self.registered)

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: name -> zero-argument factory returning a fresh operator module.
OPERATORS = _Operators()


def register_operator(name: str) -> Callable[[OperatorFactory], OperatorFactory]:
    """Decorator registering an operator factory (a module class or a callable)."""

    def decorator(factory: OperatorFactory) -> OperatorFactory:
        from safs.entry_points import clash, provider

        if name in OPERATORS.registered:
            raise clash("operators", name, provider(OPERATORS.registered[name]), provider(factory))
        if not (factory.__module__ or "").startswith("safs."):  # a built-in is never a plugin's
            plugins = OPERATORS.plugins()
            if name in plugins:
                raise clash("operators", name, plugins[name].provider, provider(factory))
        OPERATORS.registered[name] = factory
        return factory

    return decorator


def list_operators() -> list[str]:
    """Registered operator names, sorted."""
    return sorted(OPERATORS)


def create_operator(name: str) -> nn.Module:
    """Build a fresh operator module (fresh intrinsic parameters) by name."""
    try:
        factory = OPERATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation operator {name!r}; accepted: {', '.join(list_operators())}"
        ) from None
    return factory()


class ScaledFunction(nn.Module):
    """Operator computing ``alpha * f(beta * x)`` for a pure, parameter-free ``f``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        return alpha * self.fn(beta * x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def _register_function(name: str, fn: Callable[[Tensor], Tensor]) -> None:
    # A default argument binds fn now, so each factory builds its own function.
    register_operator(name)(lambda fn=fn: ScaledFunction(fn))


def _symlog(z: Tensor) -> Tensor:
    return torch.sign(z) * torch.log1p(torch.abs(z))


def _symexp(z: Tensor) -> Tensor:
    return torch.sign(z) * torch.expm1(torch.abs(z))


def _identity(z: Tensor) -> Tensor:
    return z


def _leaky_relu(z: Tensor) -> Tensor:
    return F.leaky_relu(z, negative_slope=0.01)


# Pure functions: alpha * f(beta * x). `relu` is the default/baseline operator.
for _name, _fn in {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "gelu": F.gelu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "logsigmoid": F.logsigmoid,
    "symlog": _symlog,
    "symexp": _symexp,
    "identity": _identity,
    "silu": F.silu,
    "mish": F.mish,
    "selu": F.selu,
    "sin": torch.sin,
    "leaky_relu": _leaky_relu,
}.items():
    _register_function(_name, _fn)


@register_operator("swish")
class Swish(nn.Module):
    """``alpha * sigmoid(beta * x) * x`` — the trailing ``x`` is deliberately not
    scaled by ``beta``: that is the original SAFS formula (and EfficientNet's
    default), so with beta != 1 it differs from ``silu``."""

    def forward(self, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        return alpha * torch.sigmoid(beta * x) * x


def _intrinsic() -> nn.Parameter:
    # Intrinsic parameters train by default (the original trained them in stage 1 too).
    return nn.Parameter(torch.tensor(1.0))


@register_operator("tanhsoft1")
class TanhSoft1(nn.Module):
    """TanhSoft-1: ``alpha * tanh(p1 * z) * softplus(z)`` with ``z = beta * x``."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = _intrinsic()

    def forward(self, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        z = beta * x
        return alpha * torch.tanh(self.p1 * z) * F.softplus(z)


@register_operator("acon")
class AconC(nn.Module):
    """ACON-C: ``alpha * [d * sigmoid(p3 * d) + p2 * z]`` with ``z = beta * x`` and
    ``d = (p1 - p2) * z``."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = _intrinsic()
        self.p2 = _intrinsic()
        self.p3 = _intrinsic()

    def forward(self, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        z = beta * x
        d = self.p1 * z - self.p2 * z
        return alpha * (d * torch.sigmoid(self.p3 * d) + self.p2 * z)


@register_operator("srs")
class SoftRootSign(nn.Module):
    """Soft root sign: ``alpha * z / (z / p1 + exp(-z / p2))`` with ``z = beta * x``.

    With ``k = p2 / p1`` the denominator's minimum is ``k * (1 - ln k)``, positive
    while ``p2 / p1 < e`` (at the initial p1 = p2 = 1 it is >= 1). Training could push
    it past that; it is not guarded, to keep the original formula.

    It is computed in an equal form that never overflows: with ``t = -z / p2``, where ``t > 0``
    numerator and denominator are both multiplied by ``exp(-t)``, so ``exp`` only ever sees
    ``-|t|``. The plain form overflowed to inf once training shrank ``p2`` (``exp(50 / 0.09)``
    in a one-shot search), and its backward then gave ``0 * inf = NaN``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.p1 = _intrinsic()
        self.p2 = _intrinsic()

    def forward(self, x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        z = beta * x
        t = -z / self.p2
        e = torch.exp(-t.abs())
        big = t > 0  # exp(t) would be large: scale numerator and denominator by e = exp(-t)
        num = torch.where(big, z * e, z)
        den = torch.where(big, z * e / self.p1 + 1, z / self.p1 + e)
        return alpha * (num / den)


__all__ = [
    "OPERATORS",
    "OperatorFactory",
    "ScaledFunction",
    "create_operator",
    "list_operators",
    "register_operator",
]
