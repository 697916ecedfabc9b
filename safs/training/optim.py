"""Optimizers and learning-rate schedules by name (one registry each).

Optimizers: ``sgd``, ``adam``, ``adamw`` (torch), ``tadam`` (:class:`TAdam`, below) and ``fromage``
(Bernstein et al. 2020, from the ``pytorch-optimizer`` package). The original SAFS code's stage-2
space uses SGD, Adam, TAdam and Fromage.

Schedules (stepped once per epoch; ``E`` = the epochs of the current call, ``W`` = ``warmup_epochs``):

=======================  =====================================================================
``constant``             the base LR
``halving``              × 0.5 every 20 epochs (the original's VGG schedule)
``step``                 × ``gamma`` every ``step_size`` epochs (``step_size: null``: E // 4, as the original)
``cosine``               cosine from the base LR to ``eta_min`` over E − W epochs
``cosine_warm_restarts`` cosine to ``eta_min`` restarting every ``t0`` epochs (``t0: null``: E // 4)
``linear_warmup``        the warm-up alone, then constant (the original's "Linear": 0.1 → 1 over 5 epochs)
``plateau``              × ``gamma`` when the *training* loss has not improved for ``patience`` epochs
=======================  =====================================================================

Every schedule but ``plateau`` may start with a linear warm-up: the LR multiplier rises from
``warmup_start_factor`` at epoch 0 to 1 at epoch W; the schedule proper then starts (its epoch 0
is epoch W). All of them but ``plateau`` are one ``LambdaLR`` with a closed-form multiplier.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from safs.settings import OptimizerConfig, ScheduleConfig


class TAdam(torch.optim.Optimizer):
    """TAdam (Ilboudo, Kobayashi & Sugimoto, "TAdam: A Robust Stochastic Gradient Optimizer", 2020;
    "Robust Stochastic Gradient Descent With Student-t Distribution Based First-Order Momentum",
    IEEE TNNLS 2022): Adam whose first moment is a Student-t weighted mean, so a gradient far from
    the running mean (an outlier) moves it less.

    For each parameter tensor with d elements, ν = ``dof_scale`` · d degrees of freedom, and m, v
    the moments before this step::

        w  = (ν + d) / (ν + Σ_j (g_j − m_j)² / (v_j + ε))
        m ← (W·m + w·g) / (W + w);   W ← β1·(W + w)          (W starts at β1 / (1 − β1))
        v ← β2·v + (1 − β2)·g²
        θ ← θ − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)

    With w ≡ 1 this is Adam. Weight decay is an L2 term added to the gradient, as in Adam.

    The original SAFS code used ``TAdam`` from the ``tmomentum`` package (the authors' own, last
    released in 2021) with betas (0.9, 0.99); this implementation was written for safs and checked
    to match tmomentum 1.0.1's ``TAdam`` (default ``k_dof=1``) to float32 rounding on a small
    network with outlier batches, so the dependency is not needed.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, dof_scale: float = 1.0):
        if lr <= 0 or eps < 0 or weight_decay < 0 or dof_scale <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"TAdam: invalid settings lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}, dof_scale={dof_scale}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      dof_scale=dof_scale))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("TAdam does not support sparse gradients")
                g = p.grad if not wd else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["weight_sum"] = torch.full((), beta1 / (1 - beta1), dtype=p.dtype, device=p.device)
                state["step"] += 1
                m, v, big_w = state["exp_avg"], state["exp_avg_sq"], state["weight_sum"]
                d = p.numel()
                nu = group["dof_scale"] * d
                w = (nu + d) / (nu + ((g - m).square_() / (v + eps)).sum())
                share = w / (big_w + w)
                m.add_((g - m) * share)  # (W m + w g) / (W + w)
                big_w.add_(w).mul_(beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                t = state["step"]
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
        return loss


def fused_option(groups, optimizer: type) -> dict:
    """``{"fused": True}`` when every parameter is a floating CUDA tensor and ``optimizer``
    takes ``fused`` (one kernel for the whole step); else ``{}``. Fused and foreach steps
    agree to float rounding; like the device, this is not part of a stage's hash."""
    import inspect

    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if not params or "fused" not in inspect.signature(optimizer).parameters:
        return {}
    if all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def _sgd(groups, c: OptimizerConfig):
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                           weight_decay=c.weight_decay, **fused_option(groups, torch.optim.SGD))


def _adam(groups, c: OptimizerConfig):
    return torch.optim.Adam(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay,
                            **fused_option(groups, torch.optim.Adam))


def _adamw(groups, c: OptimizerConfig):
    return torch.optim.AdamW(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay,
                             **fused_option(groups, torch.optim.AdamW))


def _tadam(groups, c: OptimizerConfig):
    return TAdam(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)


def _fromage(groups, c: OptimizerConfig):
    # Imported here: the package imports its whole collection (about a second).
    from pytorch_optimizer import Fromage

    # No weight decay: Fromage has none (OptimizerConfig rejects a non-zero one).
    return Fromage(groups, lr=c.lr)


OPTIMIZERS: dict[str, Callable] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw, "tadam": _tadam,
                                   "fromage": _fromage}


def make_optimizer(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](groups, cfg)


def _factor(cfg: ScheduleConfig, epochs: int, base_lr: float) -> Callable[[int], float]:
    """LR multiplier as a function of the epoch index (every schedule but ``plateau``)."""
    warm = cfg.warmup_epochs

    def with_warmup(f: Callable[[int], float]) -> Callable[[int], float]:
        if warm == 0:
            return f
        s = cfg.warmup_start_factor
        return lambda e: s + (1 - s) * e / warm if e < warm else f(e - warm)

    # eta_min is an absolute LR: as a multiplier of this group's base LR.
    floor = cfg.eta_min / base_lr if base_lr > 0 else 0.0

    def cosine(e: int, period: int) -> float:
        return floor + (1 - floor) * (1 + math.cos(math.pi * e / period)) / 2

    if cfg.name in ("constant", "linear_warmup"):
        return with_warmup(lambda e: 1.0)
    if cfg.name == "halving":  # the original VGG schedule: halve every 20 epochs
        return with_warmup(lambda e: 0.5 ** (e // 20))
    if cfg.name == "step":
        size = cfg.step_size or max(1, epochs // 4)
        return with_warmup(lambda e: cfg.gamma ** (e // size))
    if cfg.name == "cosine":
        period = max(1, epochs - warm)
        return with_warmup(lambda e: cosine(e, period))
    if cfg.name == "cosine_warm_restarts":  # T_mult = 1
        t0 = cfg.t0 or max(1, epochs // 4)
        return with_warmup(lambda e: cosine(e % t0, t0))
    raise ValueError(f"schedule.name: '{cfg.name}' has no closed form")


def make_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int):
    """A scheduler stepped once per epoch (``plateau`` is stepped with the training loss)."""
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=cfg.patience)
    bases = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, [_factor(cfg, epochs, b) for b in bases])


def step_scheduler(sched, train_loss: float) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(train_loss)
    else:
        sched.step()


# --- from a stage's settings (the ``stage`` dict of a trial's spec) ------------------------------
def param_groups(model: torch.nn.Module, st: dict) -> list[dict]:
    """Trainable parameters; the activation slots' α, β (when trainable) in their own group,
    without weight decay unless ``scales_weight_decay`` says otherwise."""
    from safs.activations import slots

    scale_ids = {id(p) for s in slots(model).values() for p in (s.alpha, s.beta)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in scale_ids]}]
    scales = [p for p in params if id(p) in scale_ids]
    if scales:
        groups.append({"params": scales, "weight_decay": st.get("scales_weight_decay") or 0.0})
    return groups


def optimizer_for(groups: list[dict], st: dict) -> torch.optim.Optimizer:
    """The stage's optimizer (``st["optimizer"]``) over ``groups``."""
    from safs.settings import OptimizerConfig

    return make_optimizer(groups, OptimizerConfig(**st["optimizer"]))


def scheduler_for(optimizer: torch.optim.Optimizer, st: dict, epochs: int):
    """The stage's learning-rate schedule (``st["schedule"]``) over ``epochs``."""
    from safs.settings import ScheduleConfig

    return make_scheduler(optimizer, ScheduleConfig(**st["schedule"]), epochs)
