"""The ``train`` stage (dense, retrain, final): one Tune trial, one report per epoch.

Each epoch ends with a checkpoint holding the full training state, so a killed trial or a
restored experiment continues from its last epoch with the same data order (batches are
seeded by (seed, epoch)).
"""

from __future__ import annotations

import time

import torch
from ray import tune

from safs.stages import common
from safs.training.loop import Diverged, autocast_for, evaluate, train_epoch
from safs.training.optim import make_optimizer, make_scheduler, step_scheduler


def run_trial(spec: dict) -> None:
    st = spec["stage"]
    device = common.trial_device(spec)
    ds = common.dataset(spec, device)
    if spec.get("input"):
        model, _ = common.load_model(spec["input"])
    else:
        model = common.new_model(spec, ds)
    from safs.activations import set_scales_trainable

    set_scales_trainable(model, st["scales_trainable"])
    fit(spec, model, st, st["epochs"])


def fit(spec: dict, model: torch.nn.Module, st: dict, epochs: int, *, keep_best: bool = False,
        extra: dict | None = None) -> None:
    """Train ``model`` for ``epochs`` with the settings ``st``, one Tune report (and checkpoint)
    per epoch; the last checkpoint also holds the finalized ``model.pt`` and ``history.json``.

    ``keep_best``: ``model.pt`` holds the weights of the best-validation epoch instead of the
    last (search candidates are scored by their best epoch). ``extra``: constant metrics added
    to every report. Every report carries ``score``, the best validation accuracy so far.
    """
    from safs.data import Batches
    from safs.sparsity import create_method

    device = common.trial_device(spec)
    ds = common.dataset(spec, device)
    model = common.prepare_for_device(model, device)
    method = None
    if spec["sparsity"] is not None:
        sp = spec["sparsity"]
        method = create_method(sp["method"], sp["target"], sp["options"])
        model = method.attach(model)

    groups = _param_groups(model, st)
    if method is not None:
        groups = method.param_groups(model, groups)
    optimizer = make_optimizer(groups, _optimizer_cfg(st))
    scheduler = make_scheduler(optimizer, _schedule_cfg(st), epochs)

    start, history, best_state = 0, [], None
    with common.resume_point(spec, device) as (state, state_dir):
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if method is not None:
                method.load_state_dict(state["method"])
                method.attach(model)  # re-derive per-step caches from the restored masks
            start, history, best_state = state["epoch"], state["history"], state.get("best")
            if start >= epochs:  # it had finished when the stage stopped: report it again, train nothing
                tune.report(history[-1], checkpoint=tune.Checkpoint.from_directory(str(state_dir)))
                return

    seed = spec["seed"] * 1000 + spec["index"]  # distinct data order per stage, fixed per seed
    train_batches = Batches(ds, "train", st["batch_size"], train=True, seed=seed, augment=st["augment"])
    val_batches = Batches(ds, "val", st["eval_batch_size"], train=False)
    test_batches = Batches(ds, "test", st["eval_batch_size"], train=False)
    autocast = lambda: autocast_for(device)  # noqa: E731
    meta = common.model_meta(spec, ds)
    if method is not None:
        method.on_train_start(len(train_batches), epochs, start)

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        if method is not None:
            method.on_epoch_start(epoch)
        train_loss, train_acc = train_epoch(model, train_batches.epoch(epoch), optimizer, method,
                                            label_smoothing=st["label_smoothing"], autocast=autocast)
        if method is not None:
            method.on_epoch_end(epoch)
        step_scheduler(scheduler, train_loss)
        val_loss, val_acc = evaluate(model, val_batches.epoch(0), autocast=autocast)
        _, test_acc = evaluate(model, test_batches.epoch(0), autocast=autocast)
        improved = not history or val_acc > max(h["val_acc"] for h in history)
        metrics = {**(extra or {}), "epoch": epoch + 1, "epochs": epochs, "start_epoch": start, "lr": lr,
                   "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, "test_acc": test_acc,
                   "score": max([val_acc] + [h["val_acc"] for h in history]),
                   "epoch_s": time.perf_counter() - t0}
        history.append(metrics)
        if keep_best and improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with common.checkpoint_dir() as d:
            torch.save({"epoch": epoch + 1, "history": history, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "method": method.state_dict() if method is not None else {},
                        "best": best_state if keep_best else None}, d / "state.pt")
            if epoch + 1 == epochs:
                if keep_best and best_state is not None:
                    model.load_state_dict(best_state)
                final = method.finalize(model) if method is not None else model
                common.save_model(d / "model.pt", final, meta, spec["sparsity"] and spec["sparsity"]["method"])
            # In every checkpoint: a report line can be lost to a kill, the checkpoint's history not.
            common.write_history(d, history)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(d)))


def fit_candidate(spec: dict, model: torch.nn.Module, st: dict, epochs: int, token: int) -> None:
    """``fit`` for one search/HPO candidate: scored by its best epoch, whose weights it keeps.

    A candidate whose loss diverges reports a failure and ends normally: retrying a
    deterministic divergence would only burn epochs, and the search goes on either way.
    """
    try:
        fit(spec, model, st, epochs, keep_best=True, extra={"token": token})
    except Diverged as e:
        tune.report({"token": token, "epoch": epochs, "score": float("nan"), "failed": str(e)})


def _param_groups(model: torch.nn.Module, st: dict) -> list[dict]:
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


def _optimizer_cfg(st: dict):
    from safs.config import OptimizerConfig

    return OptimizerConfig(**st["optimizer"])


def _schedule_cfg(st: dict):
    from safs.config import ScheduleConfig

    return ScheduleConfig(**st["schedule"])
