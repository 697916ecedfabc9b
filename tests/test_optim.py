"""Optimizers and learning-rate schedules by name: each optimizer descends, each schedule's LR
sequence follows its formula (torch's own schedulers as the reference where one exists)."""

import math

import pytest
import torch
from pydantic import ValidationError

from safs.settings import OptimizerConfig, ScheduleConfig
from safs.training.optim import OPTIMIZERS, TAdam, make_optimizer, make_scheduler, step_scheduler


def _quadratic_run(cfg: OptimizerConfig, steps: int = 60) -> tuple[float, float]:
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(10) + 2.0)
    target = torch.linspace(-1, 1, 10)
    opt = make_optimizer([{"params": [x]}], cfg)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], ((x.detach() - target) ** 2).sum().item()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_reduces_a_quadratic(name):
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "tadam", "fromage"}
    wd = 0.0 if name == "fromage" else 1e-4
    first, last = _quadratic_run(OptimizerConfig(name=name, lr=0.05, weight_decay=wd))
    assert last < 0.5 * first, (name, first, last)


def test_optimizer_settings_reach_torch():
    p = [torch.nn.Parameter(torch.zeros(2))]
    adam = make_optimizer([{"params": p}], OptimizerConfig(name="tadam", lr=0.003, betas=(0.9, 0.99), weight_decay=0.1))
    assert isinstance(adam, TAdam)
    assert adam.param_groups[0]["betas"] == (0.9, 0.99) and adam.param_groups[0]["weight_decay"] == 0.1
    sgd = make_optimizer([{"params": p}], OptimizerConfig(name="sgd", lr=0.1, momentum=0.5, nesterov=True))
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.5
    fromage = make_optimizer([{"params": p}, {"params": [torch.nn.Parameter(torch.ones(1))], "weight_decay": 0.0}],
                             OptimizerConfig(name="fromage", lr=0.01))
    assert type(fromage).__name__ == "Fromage" and fromage.param_groups[0]["lr"] == 0.01


def test_fromage_has_no_weight_decay():
    with pytest.raises(ValidationError, match="fromage has no weight decay"):
        OptimizerConfig(name="fromage", weight_decay=1e-4)


def test_tadam_discounts_an_outlier_gradient():
    """The Student-t first moment: one huge gradient moves TAdam far less than Adam."""
    jumps = {}
    for cls in (torch.optim.Adam, TAdam):
        torch.manual_seed(0)
        x = torch.nn.Parameter(torch.zeros(50))
        opt = cls([x], lr=0.01, betas=(0.9, 0.99))
        for _ in range(20):
            x.grad = 1.0 + 0.1 * torch.randn(50)
            opt.step()
        before = x.detach().clone()
        x.grad = torch.full((50,), 1000.0) * torch.sign(torch.randn(50))
        opt.step()
        jumps[cls.__name__] = (x.detach() - before).abs().mean().item()
    assert jumps["TAdam"] < 0.2 * jumps["Adam"], jumps


def test_tadam_resumes_from_its_state_dict():
    def make():
        torch.manual_seed(0)
        x = torch.nn.Parameter(torch.randn(5))
        return x, TAdam([x], lr=0.05, betas=(0.9, 0.99), weight_decay=0.01)

    def steps(x, opt, n):
        for i in range(n):
            opt.zero_grad()
            ((x - i) ** 2).sum().backward()
            opt.step()

    x, opt = make()
    steps(x, opt, 6)
    x2, opt2 = make()
    steps(x2, opt2, 3)
    y, opt3 = make()
    with torch.no_grad():
        y.copy_(x2)
    opt3.load_state_dict(opt2.state_dict())
    for i in range(3, 6):  # the same 3 further steps as the uninterrupted run
        opt3.zero_grad()
        ((y - i) ** 2).sum().backward()
        opt3.step()
    assert torch.allclose(x, y)


# --------------------------------------------------------------------------- schedules

def _lrs(cfg: ScheduleConfig, epochs: int, base: float = 1.0, losses=None) -> list[float]:
    """The LR each epoch trains with (read before the epoch's scheduler step)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = make_scheduler(opt, cfg, epochs)
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        step_scheduler(sched, losses[e] if losses else 1.0)
    return out


def _torch_lrs(make, epochs: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant():
    assert _lrs(ScheduleConfig(name="constant"), 6) == [1.0] * 6


def test_halving_every_20_epochs():
    lrs = _lrs(ScheduleConfig(name="halving"), 45)
    assert lrs[0] == lrs[19] == 1.0 and lrs[20] == lrs[39] == 0.5 and lrs[40] == 0.25


def test_step_default_size_is_a_quarter_of_the_epochs():
    lrs = _lrs(ScheduleConfig(name="step", step_size=None, gamma=0.1), 20)  # step every 5 epochs
    assert lrs == pytest.approx([0.1 ** (e // 5) for e in range(20)])
    lrs = _lrs(ScheduleConfig(name="step", step_size=None), 3)  # fewer than 4 epochs: every epoch
    assert lrs == pytest.approx([1.0, 0.1, 0.01])


def test_step_with_an_explicit_size():
    assert ScheduleConfig().step_size == 30  # unchanged default
    lrs = _lrs(ScheduleConfig(name="step", step_size=3, gamma=0.5), 10)
    assert lrs == pytest.approx([0.5 ** (e // 3) for e in range(10)])


def test_linear_warmup_then_constant():
    lrs = _lrs(ScheduleConfig(name="linear_warmup", warmup_epochs=5, warmup_start_factor=0.1), 9, base=0.1)
    # torch.optim.lr_scheduler.LinearLR(start_factor=0.1, total_iters=5): the original's "Linear"
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5), 9)
    assert lrs == pytest.approx([0.1 * r for r in ref])
    assert lrs == pytest.approx([0.01, 0.028, 0.046, 0.064, 0.082, 0.1, 0.1, 0.1, 0.1])


def test_linear_warmup_needs_warmup_epochs_and_plateau_has_none():
    with pytest.raises(ValidationError, match="linear_warmup needs warmup_epochs"):
        ScheduleConfig(name="linear_warmup")
    with pytest.raises(ValidationError, match="plateau has no warm-up"):
        ScheduleConfig(name="plateau", warmup_epochs=2)


def test_warmup_before_halving_and_cosine():
    lrs = _lrs(ScheduleConfig(name="halving", warmup_epochs=2, warmup_start_factor=0.5), 24)
    assert lrs[:3] == pytest.approx([0.5, 0.75, 1.0]) and lrs[21] == 1.0 and lrs[22] == 0.5
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=2), 12)
    cos = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10), 10)
    assert lrs == pytest.approx([0.1, 0.55] + cos)


def test_cosine_matches_torch():
    lrs = _lrs(ScheduleConfig(name="cosine", eta_min=0.05), 10)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.05), 10)
    assert lrs == pytest.approx(ref)
    assert lrs[5] == pytest.approx(0.05 + 0.95 * (1 + math.cos(math.pi / 2)) / 2)


def test_cosine_warm_restarts_restart_at_t0():
    lrs = _lrs(ScheduleConfig(name="cosine_warm_restarts", eta_min=5e-5), 16)  # t0 = 16 // 4
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=5e-5), 16)
    assert lrs == pytest.approx(ref)
    assert lrs[0] == lrs[4] == lrs[8] == lrs[12] == 1.0 and lrs[3] < 0.2
    assert _lrs(ScheduleConfig(name="cosine_warm_restarts", t0=3), 7)[3] == 1.0


def test_eta_min_is_an_absolute_lr_in_every_param_group():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=1.0)
    sched = make_scheduler(opt, ScheduleConfig(name="cosine", eta_min=0.01), 4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01])


def test_plateau_on_the_training_loss():
    cfg = ScheduleConfig(name="plateau", gamma=0.05, patience=2)
    lrs = _lrs(cfg, 6, losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9])
    # best 0.9 at epoch 1; epochs 2, 3, 4 do not improve: > patience bad epochs -> x0.05
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.05])


def test_scheduler_resumes_from_its_state_dict():
    cfg = ScheduleConfig(name="cosine_warm_restarts", warmup_epochs=1)
    full = _lrs(cfg, 12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg, 12)
    for _ in range(5):
        opt.step()
        sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = make_scheduler(opt2, cfg, 12)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    rest = []
    for _ in range(5, 12):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(full[5:])
