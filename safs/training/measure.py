"""One measurement for every method: sparsity, parameters, non-zeros and MACs.

Always applied to the finalized model (plain conv/linear modules with zeros in ``weight``),
never computed by a method itself, so every method is measured the same way
(reference: the sparse-methods reference specification §1.1, §1.2).

* **Layers**: every ``nn.Conv2d`` / ``nn.Linear`` (``safs.models.prunable_layers``), first
  conv and classifier included. Weight entries only; biases, BN and slot scales are never
  counted as "weights".
* **Sparsity**, with its denominator in the field name (§1.1):

  - ``sparsity_prunable``: over the *prunable* layers — those carrying a ``weight_mask``
    (the layers the method sparsified); when no layer carries one (dense or SAS models),
    all conv + linear layers. Denominator: ``prunable_weights``.
  - ``sparsity_all_weights`` (= ``sparsity``): over *all* conv + linear weights, layers the
    method left alone counted as dense. Denominator: ``weights``.
  - ``sparsity_all_params``: over every parameter (biases, BN, slot α/β included).
  - ``sparsity_masked`` (kept for older records): as ``sparsity_prunable`` but 0 when no
    layer carries a mask.

* **MACs** for one input sample (§1.2): dense MACs per layer from
  ``torch.utils.flop_counter`` (FLOPs / 2, what the layer's op costs on dense hardware).
  Sparse MACs (``nnz_macs``) = ``macs × weight density × activation density`` per layer,
  rounded to an integer per layer; the totals are the sums of the per-layer figures.
  Weight density is ``nnz / params`` (the STR / ST-3 convention). Activation density is
  the layer's ``activation_density`` attribute (default 1). A layer whose input is
  structurally sparse may also define ``macs_weight_density()`` (a ``Fraction``) to replace
  the weight density in this product. SAS layers (``safs.sparsity.sas``) read a 1:2
  sign-split input: they declare 0.5 and count their weight density over weight pairs, so a
  SAS layer costs exactly the MACs of the unconverted layer while its dense MACs (and its
  parameters) are doubled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from safs.models import prunable_layers
from safs.sparsity.masks import masked_layers


@dataclass
class Measurement:
    params: int  # all parameters (biases, BN and slot scales included)
    weights: int  # conv + linear weight entries
    nnz: int  # non-zero conv + linear weights
    sparsity: float  # over all conv + linear weights (= sparsity_all_weights)
    sparsity_masked: float  # over the layers that carry a mask; 0 if none (legacy; see sparsity_prunable)
    macs: int  # dense multiply-accumulates for one input sample
    nnz_macs: int  # sparse MACs: sum over layers of round(macs * weight density * activation density)
    layers: dict[str, dict] = field(default_factory=dict)  # name -> numel, nnz, sparsity, macs (legacy)
    # --- added: every denominator named, per-layer figures that sum to the totals ---
    prunable_weights: int = 0  # weight entries of the prunable layers (masked ones; all if none is)
    prunable_nnz: int = 0
    sparsity_prunable: float = 0.0  # over the prunable layers
    sparsity_all_weights: float = 0.0  # over all conv + linear weights
    params_nnz: int = 0  # non-zero parameters of any kind
    sparsity_all_params: float = 0.0  # over all parameters
    # name -> params (weight entries), nnz, sparsity, macs, nnz_macs, prunable, activation_density
    per_layer: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense MACs of each conv/linear layer for one sample of ``input_shape`` (C, H, W)."""
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *input_shape), device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    return {name: int(sum(counts.get(f"{root}.{name}", {}).values()) // 2) for name in prunable_layers(model)}


def _density(value: float) -> Fraction:
    d = Fraction(value).limit_denominator(1 << 16)
    if not 0 <= d <= 1:
        raise ValueError(f"activation_density must lie in [0, 1], got {value}")
    return d


@torch.no_grad()
def measure(model: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
    macs = layer_macs(model, input_shape)
    layers = prunable_layers(model)
    masked = set(masked_layers(model)) & set(layers)
    prunable = masked or set(layers)
    legacy, per_layer = {}, {}
    weights = nnz = p_numel = p_nnz = m_numel = m_nnz = total_macs = sparse_macs = 0
    for name, mod in layers.items():
        numel = mod.weight.numel()
        nz = int(torch.count_nonzero(mod.weight))
        act = _density(getattr(mod, "activation_density", 1.0))
        mac_density = mod.macs_weight_density() if hasattr(mod, "macs_weight_density") else Fraction(nz, numel or 1)
        # exact rational product, rounded once per layer
        layer_sparse = round(macs[name] * Fraction(mac_density) * act)
        legacy[name] = {"numel": numel, "nnz": nz, "sparsity": 1 - nz / numel, "macs": macs[name]}
        per_layer[name] = {"params": numel, "nnz": nz, "sparsity": 1 - nz / numel, "macs": macs[name],
                           "nnz_macs": int(layer_sparse), "prunable": name in prunable,
                           "activation_density": float(act)}
        weights += numel
        nnz += nz
        total_macs += macs[name]
        sparse_macs += int(layer_sparse)
        if name in prunable:
            p_numel += numel
            p_nnz += nz
        if name in masked:
            m_numel += numel
            m_nnz += nz
    params = sum(p.numel() for p in model.parameters())
    params_nnz = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    sparsity_all = 1 - nnz / weights if weights else 0.0
    return Measurement(
        params=params,
        weights=weights,
        nnz=nnz,
        sparsity=sparsity_all,
        sparsity_masked=1 - m_nnz / m_numel if m_numel else 0.0,
        macs=total_macs,
        nnz_macs=sparse_macs,
        layers=legacy,
        prunable_weights=p_numel,
        prunable_nnz=p_nnz,
        sparsity_prunable=1 - p_nnz / p_numel if p_numel else 0.0,
        sparsity_all_weights=sparsity_all,
        params_nnz=params_nnz,
        sparsity_all_params=1 - params_nnz / params if params else 0.0,
        per_layer=per_layer,
    )


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> float:
    """``measure(model).sparsity`` without the MAC count: the fraction of zeros over all
    conv + linear weights of a finalized model (cheap enough to run every epoch)."""
    total = zeros = 0
    for mod in prunable_layers(model).values():
        total += mod.weight.numel()
        zeros += mod.weight.numel() - int(torch.count_nonzero(mod.weight))
    return zeros / total if total else 0.0
