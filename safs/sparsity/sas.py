"""SAS: Structured Activation Sparsification, the 1:2 case (Sekikawa & Yashima, ICLR 2024).

Reference: the sparse-methods reference specification §6 (and §8.3 item 1: SAS is an
architecture transform, not weight sparsity).

**Layer math.** A converted layer projects its input ``x`` (``[B, C, H, W]`` or ``[B, F]``)
to ``P(x)`` with twice the channels, interleaved per channel::

    P(x)[:, 2c] = relu(x_c)        P(x)[:, 2c + 1] = relu(-x_c)

and applies a conv / linear that is twice as wide on its input (``2·C_in`` weights):
``y = W⁺ * relu(x) + W⁻ * relu(-x)``, i.e. every input channel gets a sign-dependent weight.
Of each pair ``(2c, 2c + 1)`` at most one entry is non-zero (both for ``x_c = 0``): the 1:2
structured activation sparsity. The pairs are adjacent input channels at the same kernel tap,
so they are consecutive along the GEMM reduction axis in the NHWC (C-fastest) order. Autograd
of ``relu`` gives the reference gradient (``1[x>0]`` and ``-1[x<0]``).

**Which layers** (§6.2, per model; anything else raises ``ValueError`` at ``attach``):

* every ``nn.Conv2d`` except the first (the one reading the image) and every ``nn.Linear``;
* ``lenet5``: conv2, fc1, fc2, fc3; ``vgg11``/``vgg16``: conv2..convN and the classifier;
* ``resnet18``: every block conv (conv1, conv2, the 1×1 shortcut convs) and the classifier,
  the stem conv excepted. Standard blocks (``act2`` after the addition): every slot is
  relocated and an identity shortcut gets a ``nn.ReLU`` (``shortcut.sas_relu``), as in the
  reference code. SAFS-shortcut blocks (``safs_shortcut: true``, no activation after the
  addition): ``act1`` and the stem's slot are relocated (layer1.0's identity shortcut gets a
  ``nn.ReLU`` in front of its own slot); conv1 / shortcut conv of later blocks and the
  classifier read the *linear* block output.

**ReLU relocation and initialisation** (what is preserved). The conversion keeps the
function of the network exactly:

* a layer whose input was ``relu(z)`` (possibly through max-pool / flatten, which commute
  with ``relu``): the slot in front of it becomes ``identity`` (the split *is* that ReLU,
  moved into the layer: §6.2 step 1) and ``W⁺ = W, W⁻ = 0``, so the layer computes
  ``W * relu(z)`` as before (the reference code's initialisation);
* a layer whose input ``u`` was linear (no activation in front: SAFS-shortcut ResNet):
  ``W⁺ = W, W⁻ = −W``, so it computes ``W * (relu(u) − relu(−u)) = W * u``.

Biases are copied. The logits of the converted network equal the original's (up to float
rounding) **except** where an average pool sits between a relocated ReLU and the layer:
the classifier of VGG and of standard ResNet-18 sees ``P(avgpool(z))`` instead of
``avgpool(relu(z))`` (the reference code's one exception, §6.2); everything before the
pool is preserved. So: LeNet-5 and SAFS-shortcut ResNet-18 exact for every input; VGG
exact for inputs up to 32×32 (the last map is 1×1); standard ResNet-18 exact up to 8×8.
The relocation needs ``α ≥ 0`` on the slot (``relu(αβz) = α·relu(βz)``).

**Activation slots.** SAS converts only networks whose relocated slots hold ``relu`` (the
split's positive part *is* a ReLU; for any other operator the conversion could not keep the
function): other operators are rejected at ``attach`` with the slot's name. After the
conversion the relocated slots hold ``identity`` and stay in the genome, so an activation
search may give them any operator ``f``: the layer then sees ``P(α·f(β·z))``. The 1:2
structure and the MAC count hold for *every* ``f`` (``P`` splits whatever it gets);
``identity`` is SAS proper, sign-preserving operators (leaky_relu, elu, tanh, symlog, ...)
add a non-linearity before the split, and non-negative ones (relu, relu6, softplus) leave
the negative half of every pair permanently zero — still valid, but the doubled weights are
wasted. Slots that SAS does not relocate (SAFS-shortcut ``shortcut.act``) are unaffected.

**Lifecycle.** ``attach`` converts (once; on an already converted model it does nothing,
so stages after the first, and resumes, keep the trained weights). There is nothing to
prune (``prune`` is a no-op; the target is ignored: activations are 1:2 by construction,
weights stay dense), no per-step hook, and ``finalize`` returns the model unchanged: the
converted layers are ``nn.Conv2d`` / ``nn.Linear`` subclasses whose only parameters are the
standard ``weight`` / ``bias`` (same state-dict keys as the original layers, 2× wide) and
whose forward prepends the parameter-free split. ``model.pt`` records the conversion
(:func:`architecture`) and ``safs.model_file.load_model`` replays it on the freshly built
model (:func:`rebuild`) before loading the weights.

**Measurement.** The converted layers declare ``activation_density = 0.5`` and a
``macs_weight_density()`` counted over weight *pairs* (a pair is zero only if both
``W⁺`` and ``W⁻`` are: the sign selects one of them per input, so zeros in one half alone
save nothing in the worst case, and ``W⁻ = 0`` right after the conversion must not halve the
count). ``safs.training.measure`` counts their dense MACs with the flop counter (2× the
original) and their sparse MACs as ``MACs × pair density × 0.5``: the unconverted layer's
MACs for a SAS layer without zero pairs. Parameters and non-zeros are plain weight counts
(2× the original per converted layer; ``W⁻ = 0`` entries count as zeros).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safs.sparsity.base import SparseMethod
from safs.sparsity.masks import MASK

SUPPORTED = "lenet5, vgg11, vgg16, resnet18 (both shortcut variants)"
TRANSFORM = "sas"  # the method's registry name: model.pt's record is rebuilt through it
ARCH_VERSION = 1
SHORTCUT_RELU = "sas_relu"  # name of the ReLU put on an identity shortcut

Negative = Literal["zero", "negate"]  # W⁻ at conversion: 0 (input was relu(z)) or −W (input was linear)


def sign_split(x: Tensor) -> Tensor:
    """``P(x)``: channel ``c`` of ``x`` becomes channels ``2c`` = relu(x_c), ``2c+1`` = relu(-x_c).

    Works on ``[B, C]`` and ``[B, C, *spatial]``; the channel axis goes last for the
    interleave, so a channels_last input gives a channels_last output without a copy back.
    """
    xl = x if x.dim() == 2 else x.movedim(1, -1)
    out = torch.stack((F.relu(xl), F.relu(-xl)), dim=-1).flatten(-2)
    return out if x.dim() == 2 else out.movedim(-1, 1)


@torch.no_grad()
def pair_density(weight: Tensor) -> Fraction:
    """Fraction of weight pairs ``(W⁺, W⁻)`` (adjacent along dim 1) with a non-zero member."""
    n = weight.numel() // 2
    if n == 0:
        return Fraction(0)
    return Fraction(int(torch.count_nonzero(torch.logical_or(weight[:, 0::2], weight[:, 1::2]))), n)


class _SignSplitLayer:
    # At most one entry of each input pair is non-zero (measure.py's activation density).
    activation_density = 0.5

    def macs_weight_density(self) -> Fraction:
        """The weight density measure.py counts sparse MACs with: per input pair the layer
        multiplies by the one weight the sign selects, so a pair costs a MAC unless both of
        its weights are zero (data-independent bound). A dense SAS layer, or one fresh from
        the conversion (``W⁻ = 0``), thus costs exactly the unconverted layer's MACs."""
        return pair_density(self.weight)


class SASConv2d(_SignSplitLayer, nn.Conv2d):
    """``conv2d(P(x), W)`` with ``W ∈ R^{C_out × 2·C_in/g × k × k}`` (``in_channels`` = 2·C_in)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(sign_split(x))


class SASLinear(_SignSplitLayer, nn.Linear):
    """``linear(P(x), W)`` with ``W ∈ R^{out × 2·in}`` (``in_features`` = 2·in)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(sign_split(x))


SAS_LAYERS = (SASConv2d, SASLinear)


@dataclass
class Plan:
    """What the conversion of one model does, in module names."""

    layers: dict[str, Negative] = field(default_factory=dict)  # layer -> W⁻ initialisation
    relocated: list[str] = field(default_factory=list)  # slots that become identity
    shortcut_relus: list[str] = field(default_factory=list)  # Sequentials that get a leading ReLU


def is_converted(model: nn.Module) -> bool:
    return any(isinstance(m, SAS_LAYERS) for m in model.modules())


def converted_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SAS_LAYERS)]


def plan(model: nn.Module) -> Plan:
    """The conversion of a supported model (``ValueError`` naming the model otherwise)."""
    from safs.models.lenet import LeNet5
    from safs.models.resnet import ResNet
    from safs.models.vgg import VGG

    if isinstance(model, LeNet5):
        return Plan(layers={"conv2": "zero", "fc1": "zero", "fc2": "zero", "fc3": "zero"},
                    relocated=["act1", "act2", "act3", "act4"])
    if isinstance(model, VGG):
        convs = [n for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)]
        acts = [n for n in model.features._modules if n.startswith("act")]
        p = Plan(relocated=[f"features.{a}" for a in acts])
        p.layers = {f"features.{c}": "zero" for c in convs[1:]}
        p.layers["classifier"] = "zero"
        return p
    if isinstance(model, ResNet):
        return _resnet_plan(model)
    raise ValueError(
        f"sparsity method 'sas' does not support model {type(model).__name__}: the conversion "
        f"needs to know which ReLU feeds which layer; supported models: {SUPPORTED}")


def _resnet_plan(model: nn.Module) -> Plan:
    p = Plan(relocated=["stem.act"])
    # Whether the next block's input is a relocated ReLU's output (True) or linear (False).
    relu_input = True
    for s in ("layer1", "layer2", "layer3", "layer4"):
        for b, block in getattr(model, s).named_children():
            name = f"{s}.{b}"
            init: Negative = "zero" if relu_input else "negate"
            p.layers[f"{name}.conv1"] = init
            p.relocated.append(f"{name}.act1")
            p.layers[f"{name}.conv2"] = "zero"
            if "conv" in block.shortcut._modules:
                p.layers[f"{name}.shortcut.conv"] = init
            elif relu_input:
                p.shortcut_relus.append(f"{name}.shortcut")  # keep the shortcut's relu(z)
            if block.act2 is not None:  # standard block: act2 after the addition
                p.relocated.append(f"{name}.act2")
                relu_input = True
            else:  # SAFS block: the block output is linear
                relu_input = False
    p.layers["classifier"] = "zero" if relu_input else "negate"
    return p


def convert(model: nn.Module, *, init: bool = True, check: bool = True) -> Plan:
    """Convert ``model`` in place (see the module docstring); returns what was done.

    ``init=False`` leaves the new layers' weights uninitialised (they are about to be
    overwritten by a checkpoint); ``check=False`` skips the slot-operator checks (a model
    rebuilt for loading gets its genome afterwards).
    """
    from safs.activations import ActivationSlot

    p = plan(model)
    modules = dict(model.named_modules())
    for name in p.layers:
        mod = modules[name]
        if isinstance(mod, SAS_LAYERS):
            raise ValueError(f"sas: layer '{name}' is already converted")
        if hasattr(mod, MASK):
            raise ValueError(f"sas: layer '{name}' carries a weight mask; SAS converts dense models only")
    if check:
        for name in p.relocated:
            slot = modules[name]
            if not isinstance(slot, ActivationSlot) or slot.op_name != "relu":
                op = getattr(slot, "op_name", type(slot).__name__)
                raise ValueError(
                    f"sas: activation slot '{name}' holds '{op}'; SAS converts ReLU networks only "
                    "(the sign split replaces the slot's ReLU; convert before any activation search)")
            if float(slot.alpha) < 0:
                raise ValueError(f"sas: activation slot '{name}' has alpha < 0; relocating its ReLU needs alpha >= 0")
    for name, negative in p.layers.items():
        parent, child = _parent(model, name)
        setattr(parent, child, _wide(getattr(parent, child), negative, init))
    for name in p.relocated:
        modules[name].set_op("identity")
    for name in p.shortcut_relus:
        parent, child = _parent(model, name)
        seq = getattr(parent, child)
        setattr(parent, child, nn.Sequential(OrderedDict([(SHORTCUT_RELU, nn.ReLU()), *seq._modules.items()])))
    return p


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, child = name.rpartition(".")
    return (model.get_submodule(head) if head else model), child


@torch.no_grad()
def _wide(old: nn.Module, negative: Negative, init: bool) -> nn.Module:
    w = old.weight
    kw = {"device": w.device, "dtype": w.dtype}
    if isinstance(old, nn.Conv2d):
        new = torch.nn.utils.skip_init(
            SASConv2d, 2 * old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
            padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
            padding_mode=old.padding_mode, **kw)
    elif isinstance(old, nn.Linear):
        new = torch.nn.utils.skip_init(SASLinear, 2 * old.in_features, old.out_features,
                                       bias=old.bias is not None, **kw)
    else:
        raise ValueError(f"sas: cannot convert a {type(old).__name__}")
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        new.weight.data = new.weight.data.contiguous(memory_format=torch.channels_last)
    if init:
        new.weight[:, 0::2] = w
        new.weight[:, 1::2] = 0.0 if negative == "zero" else -w
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(w.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)
    return new


def architecture(model: nn.Module) -> dict | None:
    """What ``model.pt`` records so that :func:`rebuild` can replay the conversion
    (plain strings and lists: loadable with ``weights_only=True``); ``None`` if unconverted."""
    if not is_converted(model):
        return None
    p = plan(model)
    return {"transform": TRANSFORM, "version": ARCH_VERSION, "layers": converted_layers(model),
            "relocated": list(p.relocated), "shortcut_relus": list(p.shortcut_relus)}


def rebuild(model: nn.Module, record: dict) -> None:
    """Replay the conversion recorded by :func:`architecture` on a freshly built model
    (weights left for ``load_state_dict``, operators for the genome)."""
    if record.get("transform") != TRANSFORM or record.get("version") != ARCH_VERSION:
        raise ValueError(f"unknown architecture transform {record.get('transform')!r} "
                         f"(version {record.get('version')!r}); this safs knows '{TRANSFORM}' v{ARCH_VERSION}")
    convert(model, init=False, check=False)
    got = converted_layers(model)
    if got != list(record["layers"]):
        raise ValueError(f"sas: the rebuilt model converts {got}, the file recorded {record['layers']}")


class StructuredActivationSparsification(SparseMethod):
    """SAS 1:2 (see the module docstring). No options; the sparsity target is ignored."""

    name = "sas"
    control = "fixed"
    protocol = "architecture"
    changes_architecture = True

    @classmethod
    def architecture(cls, model: nn.Module) -> dict | None:
        return architecture(model)

    @classmethod
    def rebuild(cls, model: nn.Module, record: dict) -> None:
        rebuild(model, record)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers SAS converts (after ``attach``: the converted ones)."""
        names = set(converted_layers(model)) or set(plan(model).layers)
        return {n: m for n, m in model.named_modules() if n in names}

    def attach(self, model: nn.Module) -> nn.Module:
        if not is_converted(model):
            convert(model)
        return super().attach(model)  # no masks: the mask keeper is empty, the step hooks no-ops

    def finalize(self, model: nn.Module) -> nn.Module:
        """Already plain: the converted layers hold only standard ``weight``/``bias``."""
        return model
