"""Optimizers and learning-rate schedules by name (one registry each)."""

from __future__ import annotations

from typing import Callable

import torch

from safs.config import OptimizerConfig, ScheduleConfig


def _sgd(groups, c: OptimizerConfig):
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                           weight_decay=c.weight_decay)


def _adam(groups, c: OptimizerConfig):
    return torch.optim.Adam(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)


def _adamw(groups, c: OptimizerConfig):
    return torch.optim.AdamW(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)


OPTIMIZERS: dict[str, Callable] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def make_optimizer(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](groups, cfg)


def _factor(cfg: ScheduleConfig) -> Callable[[int], float]:
    """LR multiplier as a function of the epoch index, for the closed-form schedules."""
    warm = cfg.warmup_epochs

    def with_warmup(f: Callable[[int], float]) -> Callable[[int], float]:
        if warm == 0:
            return f
        return lambda e: (e + 1) / (warm + 1) if e < warm else f(e - warm)

    if cfg.name == "constant":
        return with_warmup(lambda e: 1.0)
    if cfg.name == "halving":  # the original VGG schedule: halve every 20 epochs
        return with_warmup(lambda e: 0.5 ** (e // 20))
    if cfg.name == "step":
        return with_warmup(lambda e: cfg.gamma ** (e // cfg.step_size))
    raise ValueError(f"schedule.name: '{cfg.name}' has no closed form")


def make_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int):
    """A scheduler stepped once per epoch (``plateau`` is stepped with the training loss)."""
    if cfg.name == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs - cfg.warmup_epochs), eta_min=cfg.eta_min)
        if not cfg.warmup_epochs:
            return cosine
        warmup = torch.optim.lr_scheduler.LinearLR(opt, 1 / (cfg.warmup_epochs + 1), 1.0, cfg.warmup_epochs)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[cfg.warmup_epochs])
    if cfg.name == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.t0 or max(1, epochs // 4), eta_min=cfg.eta_min)
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=cfg.patience)
    return torch.optim.lr_scheduler.LambdaLR(opt, _factor(cfg))


def step_scheduler(sched, train_loss: float) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(train_loss)
    else:
        sched.step()
