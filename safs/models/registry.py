"""Model registry.

A model is its builder, decorated with ``@register_model(name, default_activation,
description)``: the decorator is the one place that names and describes it. The built-in
builders live in the modules of :data:`BUILTIN_MODULES`. Listing them (``safs list models``,
config validation) reads their decorators from the modules' source, which does not import
torch; a builder's module is imported only when the model is first built, and its decorator
then registers the builder itself.

Builders have the signature
``builder(num_classes, input_shape, activation, **options) -> nn.Module``, where
``input_shape`` is ``(channels, height, width)`` and every option is a keyword-only
parameter (that is how :func:`create_model` knows the accepted options).

Installed packages add models through the ``safs.models`` entry-point group (see
:mod:`safs.plugins`): the entry point names a builder, whose ``default_activation`` attribute
(default ``"relu"``) and docstring describe it; it is imported when the model is first built.

``torchvision.<fn>`` names are handled by :mod:`safs.models.torchvision_models`
and are not entries of :data:`MODELS`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is only needed when a model is actually built
    from torch import nn

Builder = Callable[..., "nn.Module"]

TORCHVISION_PREFIX = "torchvision."
#: What a torchvision model's activation defaults to: each native activation module
#: becomes a slot of the matching operator (see ``replace_activations``).
NATIVE_ACTIVATION = "native"
#: The line `safs list models` can print for the torchvision family.
TORCHVISION_INFO = (
    f"{TORCHVISION_PREFIX}<name>".ljust(22)
    + f"activation: {NATIVE_ACTIVATION:<10} any torchvision classification model "
    "(weights=None), native activations become slots, first conv adapted to the input channels"
)

# Parameters every builder takes positionally; everything else is an option.
_BUILDER_ARGS = ("num_classes", "input_shape", "activation")


@dataclass
class ModelSpec:
    name: str
    default_activation: str
    description: str
    module: str | None = None  # where the builder registers itself (lazy import)
    builder: Builder | None = None
    plugin: Any = None  # the safs.plugins.Plugin providing it, loaded on first use


#: The modules whose ``@register_model`` builders are the built-in models, in listing order.
BUILTIN_MODULES = (
    "safs.models.lenet",
    "safs.models.vgg",
    "safs.models.resnet",
    "safs.models.efficientnet",
)


def declared_models(module: str) -> list[ModelSpec] | None:
    """The models ``module``'s ``@register_model(...)`` decorators declare, read from its
    source without importing it; ``None`` where a decorator's arguments are not literals
    (then only importing the module tells)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for deco in node.decorator_list:
            func = deco.func if isinstance(deco, ast.Call) else None
            if getattr(func, "id", getattr(func, "attr", None)) != "register_model":
                continue
            try:
                args = [ast.literal_eval(a) for a in deco.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in deco.keywords}
                bound = inspect.signature(register_model).bind(*args, **kwargs)
            except (ValueError, TypeError, SyntaxError):
                return None
            bound.apply_defaults()
            a = bound.arguments
            found.append(ModelSpec(a["name"], a["default_activation"], a["description"], module))
    return found


class _ModelRegistry(Mapping[str, Builder]):
    """name -> builder; looking a built-in name up imports its module on first use."""

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._declared = False

    @property
    def specs(self) -> dict[str, ModelSpec]:
        """Every registered model, the built-in ones first (declared, not yet imported)."""
        if not self._declared:  # first use (a decorator's included): the built-in models
            self._declared = True
            for module in BUILTIN_MODULES:
                declared = declared_models(module)
                if declared is None:
                    importlib.import_module(module)  # its decorators register here
                else:
                    self._specs.update((s.name, s) for s in declared)
            from safs.entry_points import BUILTIN, entries, provider

            taken = {n: BUILTIN if s.builder is None else provider(s.builder) for n, s in self._specs.items()}
            for name, plugin in entries("models", taken).items():
                self._specs[name] = ModelSpec(name, "relu", "", plugin=plugin)
        return self._specs

    def _load_plugin(self, spec: ModelSpec) -> ModelSpec:
        if spec.plugin is not None and spec.builder is None:
            builder = spec.plugin.load()
            if not callable(builder):
                from safs.entry_points import PluginError

                raise PluginError(f"model '{spec.name}': {spec.plugin.provider} is not a builder")
            doc = (builder.__doc__ or "").strip().splitlines()
            spec.builder = builder
            spec.default_activation = getattr(builder, "default_activation", "relu")
            spec.description = getattr(builder, "description", doc[0] if doc else "")
        return spec

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise ValueError(
                f"model.name: unknown model '{name}'; accepted: {', '.join(self.specs)}"
            ) from None

    def __getitem__(self, name: str) -> Builder:
        spec = self._load_plugin(self.specs[name])  # KeyError, as a Mapping should
        if spec.builder is None and spec.module is not None:
            importlib.import_module(spec.module)  # runs @register_model
            spec = self.specs[name]  # the decorator stored a new spec
        if spec.builder is None:
            raise RuntimeError(f"model '{name}' is listed but {spec.module} did not register it")
        return spec.builder

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


MODELS = _ModelRegistry()


def register_model(
    name: str, default_activation: str = "relu", description: str = ""
) -> Callable[[Builder], Builder]:
    """Decorator registering a model builder under ``name``."""
    if name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"model names starting with '{TORCHVISION_PREFIX}' are reserved")

    def decorator(builder: Builder) -> Builder:
        spec = MODELS.specs.get(name)
        if spec is not None and (spec.builder is not None or spec.module != builder.__module__):
            from safs.entry_points import BUILTIN, clash, provider

            first = (spec.plugin.provider if spec.plugin is not None
                     else BUILTIN if spec.builder is None else provider(spec.builder))
            raise clash("models", name, first, provider(builder))
        MODELS.specs[name] = ModelSpec(
            name, default_activation, description, builder.__module__, builder
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered model names (``torchvision.<name>`` is accepted too but not listed)."""
    return list(MODELS)


def default_activation(name: str) -> str:
    """The operator a model uses when no activation is given.

    For ``torchvision.<name>`` this is ``"native"`` (not an operator): every
    activation module keeps its own kind (ReLU -> relu, Hardswish -> hardswish...).
    """
    if name.startswith(TORCHVISION_PREFIX):
        return NATIVE_ACTIVATION
    return MODELS._load_plugin(MODELS.spec(name)).default_activation


def model_info(name: str) -> str:
    """One line describing a model, for ``safs list models``.

    ``model_info("torchvision.<name>")`` (any torchvision name) returns
    :data:`TORCHVISION_INFO`.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return TORCHVISION_INFO
    spec = MODELS.spec(name)
    if spec.plugin is not None:
        return f"{name:<22}(plugin: {spec.plugin.dist})"
    return f"{name:<22}activation: {spec.default_activation:<10} {spec.description}"


def _accepted_options(builder: Builder) -> tuple[list[str], bool]:
    """Keyword-only option names of a builder, and whether it takes ``**kwargs``."""
    params = inspect.signature(builder).parameters.values()
    names = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _BUILDER_ARGS]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_args(num_classes: int, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(
            f"input_shape must be (channels, height, width) of positive integers, got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _check_activation(activation: str | None, allow_native: bool = False) -> None:
    if activation is None or (allow_native and activation == NATIVE_ACTIVATION):
        return
    from safs.activations import OPERATORS, list_operators

    if activation not in OPERATORS:
        raise ValueError(
            f"model.activation: unknown activation '{activation}'; "
            f"accepted: {', '.join(list_operators())}"
        )


def create_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    activation: str | None = None,
    **options: Any,
) -> "nn.Module":
    """Build a model with every activation as an :class:`~safs.activations.ActivationSlot`.

    ``activation`` is the operator of every slot (``None``: the model's default).
    """
    shape = _check_args(num_classes, input_shape)
    if name.startswith(TORCHVISION_PREFIX):
        _check_activation(activation, allow_native=True)
        from safs.models.torchvision_models import build_torchvision_model

        native = activation is None or activation == NATIVE_ACTIVATION
        return build_torchvision_model(
            name[len(TORCHVISION_PREFIX):], num_classes, shape, None if native else activation,
            **options,
        )

    MODELS.spec(name)  # ValueError "model.name: unknown model ..."
    builder = MODELS[name]
    spec = MODELS.spec(name)
    _check_activation(activation)
    accepted, any_option = _accepted_options(builder)
    if not any_option:
        for key in options:
            if key not in accepted:
                raise ValueError(
                    f"model.options.{key}: unknown option for model '{name}'; "
                    f"accepted: {', '.join(accepted) or '(none)'}"
                )
    return builder(num_classes, shape, activation or spec.default_activation, **options)


def prunable_layers(model: "nn.Module") -> dict[str, "nn.Module"]:
    """Every ``nn.Conv2d`` and ``nn.Linear`` by qualified name, first conv and
    classifier included (which of them to prune is the sparsity method's call)."""
    from torch import nn

    return {
        name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
