"""Model zoo. Importing this package does not import torch (listing models stays cheap);
a model's module, and torch with it, loads when the model is first built."""

from safs.models.registry import (
    MODELS,
    NATIVE_ACTIVATION,
    TORCHVISION_INFO,
    TORCHVISION_PREFIX,
    ModelSpec,
    create_model,
    default_activation,
    list_models,
    model_info,
    prunable_layers,
    register_model,
)

__all__ = [
    "MODELS",
    "NATIVE_ACTIVATION",
    "TORCHVISION_INFO",
    "TORCHVISION_PREFIX",
    "ModelSpec",
    "create_model",
    "default_activation",
    "list_models",
    "model_info",
    "prunable_layers",
    "register_model",
]
