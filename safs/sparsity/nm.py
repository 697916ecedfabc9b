"""2:4 semi-structured weight sparsity: ``nm_magnitude`` (ASP-style) and ``nm_gumbel`` (learned).

Both keep at most 2 non-zeros in every group of 4 consecutive weights along the GEMM
reduction dimension K of a layer (reference §1.4, §5). What "consecutive" means is the
``group_order`` option, recorded in the method's state and metadata and checked by
:func:`check_nm`:

* ``"im2col"`` (default): K in PyTorch's ``F.unfold`` order (C_in/groups, k_h, k_w), k_w
  fastest, i.e. the rows of ``weight.flatten(1)``. This is the matrix that
  ``torch.sparse.to_sparse_semi_structured`` takes for a Linear layer and for a conv run as
  unfold + matmul (PyTorch has no sparse conv), and the order of the Gumbel paper
  (arXiv 2411.00288).
* ``"input_channel"``: K in NHWC implicit-GEMM order (k_h, k_w, C_in/groups), C_in fastest,
  i.e. groups along input channels at a fixed kernel tap: the order of apex ASP (``m4n2_1d``)
  and cuDNN/TensorRT sparse convolutions; the rows of ``weight.permute(0, 2, 3, 1).flatten(1)``
  (the memory of a channels-last weight).

For Linear layers and 1x1 convs both orders are the same (groups along ``in_features``).

**Eligible layers**: every ``nn.Conv2d`` / ``nn.Linear`` whose grouped dimension K is a
multiple of 4 (Linear: ``in_features``; conv: (C_in/groups)·k_h·k_w for ``im2col``,
C_in/groups for ``input_channel``). The others stay dense and unmasked (no group straddles
two output rows, unlike the Gumbel paper's ResNet stem). Runtime shape minimums (reference
§5.3) are not part of eligibility; ``benchmarks/nm_speed.py`` reports which shapes run.

**Target**: fixed at 0.5 of the eligible layers (``control = "fixed"``); the pipeline's
``sparsity.target`` (and a prune stage's ``target``) must be 0.5, anything else is a
``ValueError``. The global sparsity over all conv + linear weights is lower when some layers
are ineligible; ``safs.training.measure`` reports both.

Modes:

* ``nm_magnitude``: in every group keep the 2 largest |w| (ties by position). ``prune()``
  computes the masks one-shot; ``attach`` on a model without masks (a train stage with
  ``sparse: true`` and no prune stage before it) prunes the same way first, so
  "dense → train sparse: true" is ASP's "prune the trained model, then retrain". Masks are
  fixed afterwards (``MaskKeeper``: gradients and weights are masked around every step).
* ``nm_gumbel``: attached to a model *without* masks, every eligible layer gets 6 logits per
  group of 4 (one per 2-of-4 pattern), the weight is parametrised as W ⊙ m with
  m = straight-through Gumbel-softmax sample of the pattern (τ option), all other parameters
  are frozen and ``param_groups`` returns only the logits. Eval uses the argmax pattern (no
  noise). ``finalize`` writes W ⊙ P[argmax z] and a ``weight_mask``. Attached to a model
  that already carries 2:4 masks (any stage after the one that learned them) it keeps those
  masks fixed and trains the weights, like ``nm_magnitude``. It is a during-training method
  (the pipeline runs no prune stage for it); ``prune()`` on a dense model is an error
  (there is nothing to learn from in a prune stage; use ``nm_magnitude``).

Option ``exclude: [glob, ...]`` (both modes): eligible layers left dense and unmasked.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from safs.models import prunable_layers
from safs.sparsity.base import SparseMethod, exclude_option
from safs.sparsity.masks import MASK, MaskKeeper, set_mask

N, M = 2, 4  # keep N of every M consecutive weights
GROUP_ORDERS = ("im2col", "input_channel")
TARGET = 1 - N / M
# The six 2-of-4 patterns, one row each: [[1,1,0,0], [1,0,1,0], ..., [0,0,1,1]].
PATTERNS = torch.tensor([[float(i in keep) for i in range(M)] for keep in itertools.combinations(range(M), N)])


class NMViolationError(RuntimeError):
    """A layer's mask or weight is not N:M along the recorded group order."""


# --- group layout -----------------------------------------------------------------------------

def _check_order(order: str) -> None:
    if order not in GROUP_ORDERS:
        raise ValueError(f"sparsity.options.group_order: unknown '{order}'; accepted: {', '.join(GROUP_ORDERS)}")


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The weight's shape, without evaluating a parametrisation."""
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)


def group_dim(module: nn.Module, order: str = "im2col") -> int:
    """Length of the dimension the groups of 4 run along (the GEMM K of one output row)."""
    _check_order(order)
    shape = weight_shape(module)
    if len(shape) == 2 or order == "input_channel":
        return shape[1]  # in_features; C_in / groups
    return shape[1] * shape[2] * shape[3]  # im2col: (C_in / groups) * k_h * k_w


def is_eligible(module: nn.Module, order: str = "im2col") -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear)) and group_dim(module, order) % M == 0


def eligible_layers(model: nn.Module, order: str = "im2col") -> dict[str, nn.Module]:
    return {n: m for n, m in prunable_layers(model).items() if is_eligible(m, order)}


def to_groups(t: torch.Tensor, order: str = "im2col") -> torch.Tensor:
    """A weight-shaped tensor as rows of M consecutive K entries: shape [numel / M, M]."""
    if t.dim() == 4 and order == "input_channel":
        t = t.permute(0, 2, 3, 1)
    return t.reshape(-1, M)


def from_groups(g: torch.Tensor, shape: torch.Size | tuple[int, ...], order: str = "im2col") -> torch.Tensor:
    """Inverse of :func:`to_groups`."""
    if len(shape) == 4 and order == "input_channel":
        o, c, kh, kw = shape
        return g.reshape(o, kh, kw, c).permute(0, 3, 1, 2)
    return g.reshape(shape)


@torch.no_grad()
def nm_magnitude_mask(weight: torch.Tensor, order: str = "im2col", keep: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask keeping the N largest |w| of every group (ties: the first positions).

    ``keep``: an existing mask; positions it drops rank below every kept one and stay dropped
    (re-pruning an N:M model returns its mask)."""
    score = to_groups(weight.detach().abs().float(), order)
    if keep is not None:
        score = torch.where(to_groups(keep, order), score, torch.full_like(score, -1.0))
    # stable descending sort: equal magnitudes keep the first positions (deterministic)
    idx = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :N]
    mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    if keep is not None:
        mask &= to_groups(keep, order)
    return from_groups(mask, weight.shape, order).contiguous()


# --- Gumbel parametrisation and checking -------------------------------------------------------

class GumbelNM(nn.Module):
    """Parametrisation W -> W ⊙ m of one layer's weight; m is a 2:4 pattern per group of 4.

    Training: straight-through Gumbel-softmax over the 6 patterns (forward uses the hard
    one-hot sample, gradients reach the logits through the soft sample). Eval: the argmax
    pattern, no noise. ``patterns`` is a (non-persistent) buffer, never trained.
    """

    def __init__(self, weight: torch.Tensor, order: str, tau: float, init: str, init_scale: float):
        super().__init__()
        self.order, self.tau, self.shape = order, float(tau), tuple(weight.shape)
        self.register_buffer("patterns", PATTERNS.to(weight.device), persistent=False)
        with torch.no_grad():
            if init == "magnitude":
                a = weight.detach().abs().float()
                sums = to_groups(a, order) @ self.patterns.t()  # kept |w| of each pattern
                logits = init_scale * sums / a.mean().clamp_min(1e-12)
            else:
                logits = torch.ones(weight.numel() // M, len(PATTERNS), device=weight.device)
        self.logits = nn.Parameter(logits.float().contiguous())

    def hard_mask(self) -> torch.Tensor:
        """The eval (argmax) mask, bool, weight-shaped."""
        with torch.no_grad():
            g = self.patterns[self.logits.argmax(1)] > 0
            return from_groups(g, self.shape, self.order).contiguous()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        z = self.logits
        with torch.autocast(weight.device.type, enabled=False):
            if self.training:
                # Gumbel(0, 1) noise as -log(Exp(1))
                noise = -torch.empty_like(z).exponential_().clamp_min_(torch.finfo(z.dtype).tiny).log()
                y_soft = F.softmax((z + noise) / self.tau, dim=1)
                y_hard = F.one_hot(y_soft.argmax(1), len(PATTERNS)).to(y_soft.dtype)
                y = y_hard + (y_soft - y_soft.detach())  # exactly y_hard in the forward pass
                g = y @ self.patterns
            else:
                g = self.patterns[z.argmax(1)]
        return weight * from_groups(g.to(weight.dtype), self.shape, self.order)


def _gumbel_of(module: nn.Module) -> GumbelNM | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, GumbelNM):
                return p
    return None


@torch.no_grad()
def _eval_weight_and_mask(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The deterministic effective weight and the structural mask (None: no mask)."""
    g = _gumbel_of(module)
    if g is not None:
        mask = g.hard_mask()
        return module.parametrizations.weight.original * mask, mask
    return module.weight, getattr(module, MASK, None)


@torch.no_grad()
def check_nm(model: nn.Module, group_order: str = "im2col") -> list[str]:
    """Every N:M violation of the sparse layers of ``model``, one line per layer and kind.

    Sparse layers are those with a ``weight_mask`` buffer or a Gumbel parametrisation. For
    each: K must be a multiple of 4 along ``group_order``; every group of 4 of the mask and of
    the (eval, deterministic) effective weight has at most 2 non-zeros; masked-out weights
    are exactly 0. An empty list means hardware-valid 2:4 along ``group_order``.
    """
    _check_order(group_order)
    out = []
    for name, module in prunable_layers(model).items():
        weight, mask = _eval_weight_and_mask(module)
        if mask is None:
            continue
        k = group_dim(module, group_order)
        if k % M:
            out.append(f"{name}: masked, but its {group_order} group dimension K={k} is not a multiple of {M}")
            continue
        if mask.shape != weight.shape:
            out.append(f"{name}: weight_mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
            continue
        row = weight[0].numel()  # K of one output row
        for what, t in (("weight_mask", mask), ("weight", weight)):
            counts = (to_groups(t, group_order) != 0).sum(1)
            bad = torch.nonzero(counts > N).flatten()
            if bad.numel():
                g = int(bad[0])
                out.append(f"{name}: {bad.numel()} of {counts.numel()} {group_order} groups of {M} have more than "
                           f"{N} non-zeros in {what} (first: group {g}, output row {g * M // row}, "
                           f"K offset {g * M % row})")
        revived = int(torch.count_nonzero(weight[~mask.bool()]))
        if revived:
            out.append(f"{name}: {revived} masked-out weights are non-zero")
    return out


# --- methods ----------------------------------------------------------------------------------

class _NMMethod(SparseMethod):
    finalize_keeps_state = False  # it tags the model; 2:4 Gumbel's also leaves its learning mode
    control = "fixed"
    fixed_target: ClassVar[float] = TARGET  # the only accepted sparsity.target

    def __init__(self, target: float, group_order: str = "im2col", exclude: list[str] | None = None,
                 **options: Any):
        _check_target(self.name, target, "sparsity.target")
        _check_order(group_order)
        super().__init__(target, **options)
        self.group_order = group_order
        self.exclude = exclude_option(exclude)
        self.layer_names: list[str] = []  # eligible (masked) layers, recorded at attach
        self.dense_names: list[str] = []  # conv/linear layers left dense (K not a multiple of 4)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return self._without_excluded(eligible_layers(model, self.group_order), model)

    def _record_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        layers = self.layers(model)
        self.layer_names = list(layers)
        self.dense_names = [n for n in prunable_layers(model) if n not in layers]
        return layers

    def _keep_masks_fixed(self, model: nn.Module) -> None:
        self.verify(model, when="attach")
        self._keeper = MaskKeeper(model)

    def verify(self, model: nn.Module, when: str = "finalize") -> None:
        """Raise :class:`NMViolationError` listing every violation (see :func:`check_nm`)."""
        problems = check_nm(model, self.group_order)
        modules = dict(model.named_modules())
        problems += [f"{n}: eligible but has no mask" for n in self.layer_names
                     if n in modules and _eval_weight_and_mask(modules[n])[1] is None]
        if problems:
            raise NMViolationError(f"{self.name} ({when}): not {N}:{M} along group_order "
                                   f"'{self.group_order}':\n  " + "\n  ".join(problems))

    def metadata(self) -> dict[str, Any]:
        """What a loader needs to re-check or export the model (reference §1.3)."""
        return {"method": self.name, "n": N, "m": M, "group_order": self.group_order,
                "layers": list(self.layer_names), "dense_layers": list(self.dense_names)}

    def finalize(self, model: nn.Module) -> nn.Module:
        self.verify(model)
        model.safs_sparsity_meta = self.metadata()  # in-process only; see metadata()
        return model

    def state_dict(self) -> dict[str, Any]:
        return self.metadata()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("group_order", self.group_order) != self.group_order:
            raise ValueError(f"sparsity.options.group_order: the checkpoint was trained with "
                             f"'{state['group_order']}', this run asks for '{self.group_order}'")


def _check_target(name: str, target: float | None, where: str) -> None:
    if target is not None and abs(float(target) - TARGET) > 1e-9:
        raise ValueError(f"{where}: {name} keeps {N} of every {M} weights of the eligible layers, so its target "
                         f"is fixed; accepted: {TARGET} (got {target})")


class NMMagnitude(_NMMethod):
    """2:4 by magnitude (apex ASP ``m4n2_1d`` without channel permutation), masks fixed after."""

    name = "nm_magnitude"
    protocol = "one_shot"

    def attach(self, model: nn.Module) -> nn.Module:
        for module in self._record_layers(model).values():
            if not hasattr(module, MASK):  # from scratch (sparse: true without a prune stage)
                set_mask(module, nm_magnitude_mask(module.weight, self.group_order))
        self._keep_masks_fixed(model)
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        _check_target(self.name, target, "prune stage target")
        for module in self._record_layers(model).values():
            set_mask(module, nm_magnitude_mask(module.weight, self.group_order, getattr(module, MASK, None)))
        self._keeper = MaskKeeper(model)


class NMGumbel(_NMMethod):
    """Learned 2:4 masks: straight-through Gumbel-softmax over the six 2-of-4 patterns per group.

    Options: ``tau`` (1.0, fixed), ``init`` ("uniform": all logits 1, the paper's; "magnitude":
    z_k = init_scale · Σ_{j∈pattern k} |w_j| / mean|W| of the layer, so training starts from
    the magnitude 2:4 mask), ``lr`` / ``weight_decay`` of the logits' parameter group (the
    paper's AdamW lr 1.0, wd 1e-4; null: the stage's). The optimizer *type* is the stage's:
    use ``adamw`` for the paper's setting (Adam at lr 1.0 moves a logit by about 1 per step;
    SGD at lr 1.0 barely moves them).
    """

    name = "nm_gumbel"
    protocol = "during_training"

    def __init__(self, target: float, group_order: str = "im2col", tau: float = 1.0, init: str = "uniform",
                 init_scale: float = 1.0, lr: float | None = 1.0, weight_decay: float | None = 1e-4,
                 exclude: list[str] | None = None, **options: Any):
        super().__init__(target, group_order, exclude, **options)
        if not tau > 0:
            raise ValueError(f"sparsity.options.tau: must be > 0 (got {tau})")
        if init not in ("uniform", "magnitude"):
            raise ValueError(f"sparsity.options.init: unknown '{init}'; accepted: uniform, magnitude")
        if lr is not None and not lr > 0:
            raise ValueError(f"sparsity.options.lr: must be > 0 or null (got {lr})")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"sparsity.options.weight_decay: must be >= 0 or null (got {weight_decay})")
        self.tau, self.init, self.init_scale = float(tau), init, float(init_scale)
        self.lr, self.weight_decay = lr, weight_decay
        self.mode: str | None = None  # "learn" (logits train, weights frozen) or "fixed" (masks fixed)
        self._requires_grad: list[tuple[nn.Parameter, bool]] = []

    def attach(self, model: nn.Module) -> nn.Module:
        layers = self._record_layers(model)
        learning = [n for n, m in layers.items() if _gumbel_of(m) is not None]
        if learning:  # attached already (resume re-attaches after load_state_dict): nothing to redo
            return model
        masked = [n for n, m in layers.items() if hasattr(m, MASK)]
        if masked and len(masked) < len(layers):
            raise ValueError(f"nm_gumbel: some eligible layers carry masks and some do not "
                             f"(unmasked: {', '.join(n for n in layers if n not in masked)})")
        if masked:
            self.mode = "fixed"
            self._keep_masks_fixed(model)
            return model
        self.mode = "learn"
        self._keeper = None
        self._requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        model.requires_grad_(False)
        for module in layers.values():
            p = GumbelNM(module.weight, self.group_order, self.tau, self.init, self.init_scale)
            parametrize.register_parametrization(module, "weight", p)
            p.logits.requires_grad_(True)
        return model

    def logits(self, model: nn.Module) -> list[nn.Parameter]:
        return [g.logits for m in prunable_layers(model).values() if (g := _gumbel_of(m)) is not None]

    def param_groups(self, model: nn.Module, groups: list[dict]) -> list[dict]:
        if self.mode != "learn":
            return groups
        group: dict[str, Any] = {"params": self.logits(model)}
        if self.lr is not None:
            group["lr"] = self.lr
        if self.weight_decay is not None:
            group["weight_decay"] = self.weight_decay
        return [group]

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        _check_target(self.name, target, "prune stage target")
        if self.mode == "learn":
            raise ValueError("nm_gumbel learns its masks in a train stage with sparse: true on the dense model "
                             "(weights frozen, logits trained); a prune before that would only zero the "
                             "weights it chooses from. Use nm_magnitude for one-shot 2:4.")
        # fixed mode (direct use on a model with learned masks): they stay as they are (attach has checked them)

    def finalize(self, model: nn.Module) -> nn.Module:
        if self.mode == "learn":
            for module in prunable_layers(model).values():
                g = _gumbel_of(module)
                if g is None:
                    continue
                mask = g.hard_mask()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                set_mask(module, mask)
            for p, flag in self._requires_grad:
                p.requires_grad_(flag)
            self.mode = "fixed"
            self._keeper = MaskKeeper(model)
        return super().finalize(model)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mode": self.mode}
