"""One measurement for every method: sparsity, parameters, non-zeros and MACs.

Always applied to the finalized model (plain conv/linear modules with zeros in ``weight``),
never computed by a method itself, so every method is measured the same way. MACs come from
``torch.utils.flop_counter`` (FLOPs / 2) per layer; sparse MACs scale each layer's MACs by
its weight density, the convention of STR and ST-3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from safs.models import prunable_layers
from safs.sparsity.masks import masked_layers


@dataclass
class Measurement:
    params: int  # all parameters
    weights: int  # conv + linear weights
    nnz: int  # non-zero conv + linear weights
    sparsity: float  # over all conv + linear weights
    sparsity_masked: float  # over the layers that carry a mask ("prunable" denominator); 0 if none
    macs: int  # dense multiply-accumulates for one input sample
    nnz_macs: int  # sum over layers of density * MACs
    layers: dict[str, dict] = field(default_factory=dict)  # name -> numel, nnz, sparsity, macs

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of each conv/linear layer for one sample of ``input_shape`` (C, H, W)."""
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


@torch.no_grad()
def measure(model: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
    macs = layer_macs(model, input_shape)
    masked = set(masked_layers(model))
    layers, weights, nnz, m_numel, m_nnz, total_macs, sparse_macs = {}, 0, 0, 0, 0, 0, 0.0
    for name, mod in prunable_layers(model).items():
        numel = mod.weight.numel()
        nz = int(torch.count_nonzero(mod.weight))
        layers[name] = {"numel": numel, "nnz": nz, "sparsity": 1 - nz / numel, "macs": macs[name]}
        weights += numel
        nnz += nz
        total_macs += macs[name]
        sparse_macs += macs[name] * nz / numel
        if name in masked:
            m_numel += numel
            m_nnz += nz
    return Measurement(
        params=sum(p.numel() for p in model.parameters()),
        weights=weights,
        nnz=nnz,
        sparsity=1 - nnz / weights if weights else 0.0,
        sparsity_masked=1 - m_nnz / m_numel if m_numel else 0.0,
        macs=total_macs,
        nnz_macs=int(round(sparse_macs)),
        layers=layers,
    )
