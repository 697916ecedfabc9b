"""Model zoo: shapes, slot counts, parameter counts, registry behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from safs.activations import ActivationSlot, genome, slots
from safs.models import (
    create_model,
    default_activation,
    list_models,
    model_info,
    prunable_layers,
)

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 10), ((1, 8, 8), 10), ((3, 16, 16), 1000)]
VARIANTS = [(name, {}) for name in list_models()] + [("resnet18", {"safs_shortcut": True})]


def weight_count(model: nn.Module) -> int:
    """Parameters excluding the slots' alpha/beta (2 per slot)."""
    return sum(
        p.numel() for name, p in model.named_parameters()
        if not name.endswith((".alpha", ".beta"))
    )


def test_builtin_models_listed():
    assert list_models() == ["lenet5", "vgg11", "vgg16", "resnet18", "efficientnet_b0"]


@pytest.mark.parametrize("name,options", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("shape,classes", SHAPES, ids=lambda v: str(v))
def test_builds_and_forward_shape(name, options, shape, classes):
    model = create_model(name, classes, shape, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


EXPECTED_SLOTS = {
    ("lenet5", False): 4,
    ("vgg11", False): 8,
    ("vgg16", False): 13,
    ("resnet18", False): 17,  # stem + 8 blocks x (act1, act2)
    ("resnet18", True): 17,  # stem + 8 blocks x (act1, shortcut.act)
    ("efficientnet_b0", False): 49,  # stem + 16 blocks x (act1, act2, se.act)
}


@pytest.mark.parametrize("key,count", sorted(EXPECTED_SLOTS.items()))
def test_slot_counts(key, count):
    name, safs_shortcut = key
    options = {"safs_shortcut": True} if safs_shortcut else {}
    model = create_model(name, 10, (3, 32, 32), **options)
    assert len(slots(model)) == count
    # Every activation is a slot: no native activation module left.
    assert not any(isinstance(m, (nn.ReLU, nn.SiLU, nn.GELU)) for m in model.modules())


# Measured weight counts (alpha/beta excluded) for 3x32x32 inputs and 10 classes.
EXPECTED_WEIGHTS = {
    "lenet5": 62_006,
    "vgg11": 9_231_114,
    "vgg16": 14_728_266,
    "resnet18": 11_173_962,
    "efficientnet_b0": 2_912_089,
}


@pytest.mark.parametrize("name,count", sorted(EXPECTED_WEIGHTS.items()))
def test_weight_counts(name, count):
    model = create_model(name, 10, (3, 32, 32))
    assert weight_count(model) == count
    n_slots = len(slots(model))
    assert sum(p.numel() for p in model.parameters()) == count + 2 * n_slots


def test_lenet5_sizes():
    # 28x28: 24 -> 12 -> 8 -> 4, flatten 16*4*4 = 256;
    # weights 156 + 2,416 + 256*120+120 + 120*84+84 + 84*10+10 = 44,426.
    mnist = create_model("lenet5", 10, (1, 28, 28))
    assert mnist.flat_features == 256
    assert weight_count(mnist) == 44_426
    # The classic 61,706 is the 1x32x32 LeNet-5 (flatten 16*5*5 = 400).
    classic = create_model("lenet5", 10, (1, 32, 32))
    assert classic.flat_features == 400
    assert weight_count(classic) == 61_706
    # Small inputs get padding 2: 8 -> 8 -> 4 -> 4 -> 2, flatten 64.
    assert create_model("lenet5", 10, (1, 8, 8)).flat_features == 64
    assert list(slots(mnist)) == ["act1", "act2", "act3", "act4"]
    assert list(prunable_layers(mnist)) == ["conv1", "conv2", "fc1", "fc2", "fc3"]


def test_resnet18_slot_names():
    standard = create_model("resnet18", 10, (3, 32, 32))
    names = list(slots(standard))
    assert names[:3] == ["stem.act", "layer1.0.act1", "layer1.0.act2"]
    assert not any("shortcut" in n for n in names)
    safs = create_model("resnet18", 10, (3, 32, 32), safs_shortcut=True)
    names = list(slots(safs))
    assert "layer1.0.shortcut.act" in names  # identity shortcut: just the slot
    assert "layer2.0.shortcut.act" in names  # downsample: conv, bn, slot
    assert isinstance(safs.layer2[0].shortcut.conv, nn.Conv2d)
    assert not any(n.endswith("act2") for n in names)


def test_efficientnet_defaults_to_swish():
    assert default_activation("efficientnet_b0") == "swish"
    model = create_model("efficientnet_b0", 10, (3, 32, 32))
    assert set(genome(model).values()) == {"swish"}
    assert "blocks.0.se.act" in slots(model)
    assert default_activation("lenet5") == "relu"


def _block_parts(block, x):
    """A block's pre-gate output ``out`` and its SE gate ``w``, computed step by step."""
    out = block.act1(block.bn1(block.expand(x)))
    out = block.act2(block.bn2(block.depthwise(out)))
    out = block.bn3(block.project(out))
    se = block.se
    return out, torch.sigmoid(se.fc2(se.act(se.fc1(se.pool(out)))))


@pytest.mark.parametrize("stride2_residual", [False, True])
def test_efficientnet_stride2_blocks_add_their_own_output_only_with_the_option(stride2_residual):
    torch.manual_seed(0)
    options = {"stride2_residual": True} if stride2_residual else {}
    model = create_model("efficientnet_b0", 10, (3, 32, 32), **options).eval()
    stride2 = [i for i, b in enumerate(model.blocks) if b.depthwise.stride == (2, 2)]
    assert stride2 == [0, 3, 5, 11, 15]
    with torch.no_grad():
        x = model.stem(torch.randn(2, 3, 32, 32))
        for i, block in enumerate(model.blocks):
            out, w = _block_parts(block, x)
            y = block(x)
            if i in stride2:
                expected = out * w + out if stride2_residual else out * w  # the original: out·w + out
                assert torch.allclose(y, expected, rtol=1e-5, atol=1e-8), i
                other = out * w if stride2_residual else out * w + out  # differs from y by out
                assert float((y - other).abs().max()) == pytest.approx(float(out.abs().max()), rel=1e-4), i
            else:  # stride 1: unchanged by the option
                assert torch.allclose(y, out * w + block.shortcut(x), rtol=1e-5, atol=1e-8), i
            x = y
    assert weight_count(model) == EXPECTED_WEIGHTS["efficientnet_b0"]  # no parameters added


def test_efficientnet_stride2_residual_must_be_a_bool():
    with pytest.raises(ValueError, match=r"model\.options\.stride2_residual"):
        create_model("efficientnet_b0", 10, (3, 32, 32), stride2_residual="yes")
    with pytest.raises(ValueError, match=r"model\.options\.stride2_residual: unknown option"):
        create_model("lenet5", 10, (1, 28, 28), stride2_residual=True)


def test_activation_override():
    model = create_model("efficientnet_b0", 10, (3, 32, 32), activation="acon")
    assert set(genome(model).values()) == {"acon"}
    with pytest.raises(ValueError, match="model.activation: unknown activation 'nope'; accepted: "):
        create_model("lenet5", 10, (1, 28, 28), activation="nope")


def test_unknown_model_message():
    with pytest.raises(ValueError) as err:
        create_model("resnet19", 10, (3, 32, 32))
    assert str(err.value) == (
        "model.name: unknown model 'resnet19'; accepted: "
        "lenet5, vgg11, vgg16, resnet18, efficientnet_b0"
    )
    with pytest.raises(ValueError, match="model.name: unknown model 'resnet19'"):
        model_info("resnet19")


def test_unknown_option():
    with pytest.raises(ValueError, match=r"model\.options\.depth: .*accepted: safs_shortcut"):
        create_model("resnet18", 10, (3, 32, 32), depth=34)
    with pytest.raises(ValueError, match=r"model\.options\.safs_shortcut"):
        create_model("lenet5", 10, (3, 32, 32), safs_shortcut=True)


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match="input_shape"):
        create_model("lenet5", 10, (28, 28))


@pytest.mark.parametrize("name,first,last", [
    ("lenet5", "conv1", "fc3"),
    ("vgg11", "features.conv1", "classifier"),
    ("resnet18", "stem.conv", "classifier"),
    ("efficientnet_b0", "stem.conv", "classifier"),
])
def test_prunable_layers(name, first, last):
    model = create_model(name, 10, (3, 32, 32))
    layers = prunable_layers(model)
    assert list(layers)[0] == first and list(layers)[-1] == last
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers.values())


def test_torchvision_grayscale_resnet18():
    model = create_model("torchvision.resnet18", 10, (1, 28, 28)).eval()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    # torchvision's BasicBlock reuses one ReLU module twice: one slot per block.
    assert len(slots(model)) == 9
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert "conv1" in prunable_layers(model) and "fc" in prunable_layers(model)
    assert default_activation("torchvision.resnet18") == "native"


def test_torchvision_activation_and_errors():
    model = create_model("torchvision.mobilenet_v3_small", 5, (3, 32, 32), activation="tanh")
    assert set(genome(model).values()) == {"tanh"}
    assert any(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    with pytest.raises(ValueError, match=r"model\.name: unknown model 'torchvision\.fasterrcnn"):
        create_model("torchvision.fasterrcnn_resnet50_fpn", 10, (3, 32, 32))
    with pytest.raises(ValueError, match=r"model\.options"):
        create_model("torchvision.resnet18", 10, (3, 32, 32), bogus=1)


def test_model_info_and_declared_models_match_builders():
    from safs.models.registry import BUILTIN_MODULES, MODELS, declared_models

    declared = {s.name: s for module in BUILTIN_MODULES for s in declared_models(module)}
    assert list(declared) == list_models()
    for name in list_models():
        MODELS[name]  # import the builder: its decorator registers it
        spec, read = MODELS.specs[name], declared[name]
        assert spec.builder is not None and spec.builder.__module__ == read.module
        assert (spec.module, spec.default_activation, spec.description) == \
            (read.module, read.default_activation, read.description)
        assert name in model_info(name) and spec.default_activation in model_info(name)
    assert "torchvision.<name>" in model_info("torchvision.anything")


def test_listing_does_not_import_torch():
    code = (
        "import sys; import safs.models as m; m.list_models(); "
        "[m.model_info(n) for n in m.list_models()]; m.default_activation('vgg11'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    # Run from the repository root so the checkout is importable even if not installed.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_training_step_leaves_frozen_scales_alone():
    model = create_model("lenet5", 10, (1, 28, 28), activation="acon")
    loss = model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean()
    loss.backward()
    slot = model.act1
    assert isinstance(slot, ActivationSlot)
    assert slot.alpha.grad is None and slot.op.p1.grad is not None


def test_resnet18_imagenet_stem_is_torchvisions():
    import torch
    import torchvision

    from safs.models import create_model

    ours = create_model("resnet18", 1000, (3, 224, 224), stem="imagenet")
    theirs = torchvision.models.resnet18(weights=None)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.dim() > 1)  # noqa: E731 (conv/fc weights)
    assert count(ours) == count(theirs)
    assert ours.stem.conv.kernel_size == (7, 7) and ours.stem.conv.stride == (2, 2)
    with torch.no_grad():
        assert ours.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match="model.options.stem: unknown 'tiny'; accepted: cifar, imagenet"):
        create_model("resnet18", 10, (3, 32, 32), stem="tiny")
