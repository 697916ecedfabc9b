"""Any torchvision classification model, built untrained, with activation slots."""

from __future__ import annotations

from typing import Any

from torch import nn

from safs.activations import replace_activations


def torchvision_classification_models() -> list[str]:
    """Names of torchvision's classification builders (no detection, video, ...)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``nn.Conv2d`` for one taking ``in_channels`` (e.g. grayscale)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise ValueError("model has no nn.Conv2d whose input channels could be adapted")
    if module.in_channels == in_channels:
        return
    if module.groups != 1:
        raise ValueError(
            f"cannot adapt grouped first convolution '{name}' to {in_channels} input channels"
        )
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        kernel_size=module.kernel_size,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def build_torchvision_model(
    fn: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    activation: str | None = None,
    **options: Any,
) -> nn.Module:
    """``torchvision.models.get_model(fn, weights=None, num_classes=...)`` with slots.

    ``activation`` None keeps each native activation's kind (ReLU -> relu, ...);
    an operator name puts that operator in every slot. ``options`` go to the
    torchvision builder (e.g. ``dropout``, ``width_mult``).
    """
    import torchvision.models

    accepted = torchvision_classification_models()
    if fn not in accepted:
        raise ValueError(
            f"model.name: unknown model 'torchvision.{fn}'; accepted: "
            + ", ".join(f"torchvision.{n}" for n in accepted)
        )
    for key in ("weights", "num_classes"):
        if key in options:
            raise ValueError(f"model.options.{key}: set by safs, cannot be an option")
    try:
        model = torchvision.models.get_model(fn, weights=None, num_classes=num_classes, **options)
    except TypeError as err:  # an option the model's constructor does not take
        raise ValueError(f"model.options: torchvision.{fn} rejected the options: {err}") from err
    if input_shape[0] != 3:
        _adapt_first_conv(model, input_shape[0])
    return replace_activations(model, activation)
