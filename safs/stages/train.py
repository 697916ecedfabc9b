"""The ``train`` stage (dense, retrain, final): one Tune trial, one report per epoch.

Each epoch ends with a checkpoint holding the full training state and the kept epoch's
network, so a killed trial or a restored experiment continues from its last epoch with the
same data order (batches are seeded by (seed, epoch)) and the same random draws (every
generator is reseeded per epoch from (seed, stage, candidate, epoch)).
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch

from safs import model_file
from safs.io import torch_save
from safs.stages import common, ddp, session
from safs.training.loop import Diverged, autocast_for, compile_model, evaluate, train_epoch
from safs.training.measure import weight_sparsity
from safs.training.optim import optimizer_for, param_groups, scheduler_for, step_scheduler

MODEL_FILE = "model.pt"  # in every epoch checkpoint: the kept epoch's finalized network


def run_trial(spec: dict) -> None:
    st = spec["stage"]
    device = common.trial_device(spec)
    ds = common.dataset(spec, device)
    if spec.get("input"):
        model, _ = model_file.load_model(spec["input"])
    else:
        model = model_file.new_model(spec, ds)
    from safs.activations import set_scales_trainable

    set_scales_trainable(model, st["scales_trainable"])
    fit(spec, model, st, st["epochs"])


def fit(spec: dict, model: torch.nn.Module, st: dict, epochs: int, *, token: int | None = None) -> None:
    """Train ``model`` for ``epochs`` with the settings ``st``, one Tune report (and checkpoint)
    per epoch.

    Every epoch is evaluated on the finalized network and its sparsity measured on it; the
    selection rule (``safs.training.selection``, ``st["select"]``, default ``best``) decides
    which epoch's weights the run keeps. Every checkpoint holds the kept weights as
    ``model.pt`` and the history, so the row, ``model.pt`` and the measured sparsity always
    describe the same epoch. ``token``: the search candidate this run is (reported as a
    constant metric; also part of the seed). Every report's ``score`` is the kept epoch's
    validation accuracy.

    The test split is never used to select anything. A train stage evaluates it every epoch
    (its history is a test curve; one run per stage, so the cost is small). A search
    candidate (``token`` set) evaluates it once, after its last epoch: on the weights it
    keeps (its ``model.pt``: the row's and the trials table's ``test_acc``) and, when that is
    not the last epoch, on the last epoch's weights (``test_acc_last``); its other epochs
    report ``test_acc: None``.
    """
    from safs.data import batches
    from safs.training.selection import EpochSelector

    from safs.training.recipes import WeightEMA, make_recipe

    common.seed_trial(spec, token)
    device = common.trial_device(spec)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    ds = common.dataset(spec, device)
    model = common.prepare_for_device(model, device)
    method, model = common.attach_method(spec, model)
    rank, workers = ddp.world()  # one worker of several: resources.workers_per_trial (safs.tune.workers)
    model = ddp.sync_batchnorm(model, spec["resources"].get("sync_bn", False))

    groups = param_groups(model, st)
    if method is not None:
        groups = method.param_groups(model, groups)
    optimizer = optimizer_for(groups, st)
    scheduler = scheduler_for(optimizer, st, epochs)
    select = st.get("select", "best")  # search candidates: always their best epoch

    start, history, selector, kept, ema_state = 0, [], EpochSelector(select), None, None
    with common.resume_point(spec, device) as (state, state_dir):
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if method is not None:
                method.load_state_dict(state["method"])
                method.attach(model)  # re-derive per-step caches from the restored masks
            start, history = state["epoch"], state["history"]
            selector = EpochSelector.from_state(state.get("selector"), select)
            kept = torch.load(state_dir / MODEL_FILE, map_location="cpu", weights_only=True)
            ema_state = state.get("ema") or None
            if start >= epochs:  # it had finished when the stage stopped: report it again, train nothing
                session.report(history[-1], state_dir)
                return

    seed = spec["seed"] * 1000 + spec["index"]  # distinct data order per stage, fixed per seed
    # Each worker takes its share of every batch: the steps are the one-worker run's.
    train_batches = batches(ds, "train", st["batch_size"], train=True, seed=seed, augment=st["augment"],
                            rank=rank, world_size=workers)
    val_batches = batches(ds, "val", st["eval_batch_size"], train=False)
    test_batches = batches(ds, "test", st["eval_batch_size"], train=False)
    autocast = lambda: autocast_for(device)  # noqa: E731
    meta = model_file.model_meta(spec, ds)
    method_name = spec["sparsity"] and spec["sparsity"]["method"]
    if method is not None:
        method.on_train_start(len(train_batches), epochs, start)
    recipe = make_recipe(st, ds)
    distill = _distiller(spec, st, device)
    ema = WeightEMA(model, st["ema"]["decay"]) if st.get("ema") else None
    if ema is not None and ema_state is not None:
        ema.load_state_dict(ema_state)
    # Evaluation and the kept model: the averaged weights when there are some.
    averaged = ema.applied if ema is not None else contextlib.nullcontext
    net = compile_model(model, device) if st.get("compile") else model
    net = ddp.for_training(net, device)  # gradients averaged over the workers in backward

    test_every_epoch = token is None
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        common.seed_trial(spec, token, epoch)
        lr = optimizer.param_groups[0]["lr"]
        if method is not None:
            method.on_epoch_start(epoch)
        train_loss, train_acc = train_epoch(net, train_batches.epoch(epoch), optimizer, method,
                                            label_smoothing=st["label_smoothing"], autocast=autocast,
                                            recipe=recipe, ema=ema, distill=distill)
        if method is not None:
            method.on_epoch_end(epoch)
        train_loss, train_acc = ddp.mean_over_workers(train_loss, train_acc)
        ddp.share_batchnorm_statistics(model)
        step_scheduler(scheduler, train_loss)
        # Evaluated and measured as it would be saved: the finalized network of this epoch.
        with averaged():
            final = finalized(method, model)
            val_loss, val_acc = evaluate(final, val_batches.epoch(0), autocast=autocast)
            sparsity = weight_sparsity(final)
            if selector.offer(epoch + 1, val_acc, sparsity):
                kept = model_file.model_blob(final, meta, method_name)
            test_acc = None
            if test_every_epoch or epoch + 1 == epochs:
                _, test_acc = evaluate(final, test_batches.epoch(0), autocast=autocast)
            del final
        if test_every_epoch:
            kept_test = test_acc if selector.epoch == epoch + 1 else _test_of(history, selector.epoch)
        elif epoch + 1 < epochs:
            kept_test = None
        elif selector.epoch == epoch + 1:
            kept_test = test_acc
        else:  # the kept epoch is an earlier one: test the weights model.pt holds, once
            kept_net = common.prepare_for_device(model_file.model_from_blob(kept, device), device)
            _, kept_test = evaluate(kept_net, test_batches.epoch(0), autocast=autocast)
            del kept_net
            for h in history:
                if h.get("epoch") == selector.epoch:
                    h["test_acc"] = kept_test
        metrics = {"token": token, "epoch": epoch + 1, "epochs": epochs, "start_epoch": start, "lr": lr,
                   "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, "test_acc": test_acc, "sparsity": sparsity,
                   "selected_epoch": selector.epoch, "selected_test_acc": kept_test, "select": select,
                   "score": selector.val_acc,
                   "epoch_s": time.perf_counter() - t0}
        if token is None:
            del metrics["token"]
        if workers > 1:  # each rank's own: equal on every rank when the method's state is
            metrics["sparse_digest"] = ddp.sparse_digest(method, model)
        history.append(metrics)
        with common.checkpoint_dir() as d:
            torch.save({"epoch": epoch + 1, "history": history, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "method": method.state_dict() if method is not None else {},
                        "selector": selector.state_dict(), "ema": ema.state_dict() if ema is not None else {}},
                       d / "state.pt")
            torch_save(kept, d / MODEL_FILE)
            # In every checkpoint: a report line can be lost to a kill, the checkpoint's history not.
            common.write_history(d, history)
            session.report(metrics, d)


def _distiller(spec: dict, st: dict, device: torch.device):
    """The stage's ``Distiller`` (``None`` without ``distill``): its teacher is the ``model.pt``
    the runner resolved (``spec["teacher"]``), on the trial's device."""
    d = st.get("distill")
    if not d:
        return None
    from safs.training.recipes import Distiller

    teacher, _ = model_file.load_model(spec["teacher"])
    return Distiller(common.prepare_for_device(teacher, device), d["alpha"], d["temperature"])


def _test_of(history: list[dict], epoch: int | None) -> float | None:
    return next((h.get("test_acc") for h in history if h.get("epoch") == epoch), None)


def finalized(method, model: torch.nn.Module) -> torch.nn.Module:
    """The network ``method.finalize`` would export now, without touching the training state.

    finalize may change the model and the method in place (2:4 Gumbel leaves its learning
    mode and unfreezes weights), so it runs on copies of both made with one memo: the
    method's references into the model (mask keepers, frozen parameters) then point into the
    copy. An attribute that cannot be deep-copied is immutable (a mapping proxy) and shared.
    A method whose finalize keeps both as they were (``finalize_keeps_state``: most copy the
    model themselves) is called on the live ones: one copy per epoch instead of two."""
    if method is None:
        return model
    if method.finalize_keeps_state:
        return method.finalize(model)
    memo: dict = {}
    model_copy = copy.deepcopy(model, memo)
    _own_parametrized_classes(model_copy)
    method_copy = copy.copy(method)
    for key, value in vars(method).items():
        try:
            setattr(method_copy, key, copy.deepcopy(value, memo))
        except TypeError:
            pass
    return method_copy.finalize(model_copy)


def _own_parametrized_classes(model: torch.nn.Module) -> None:
    """A deep copy of a parametrized module shares its generated class with the original, and
    removing a parametrization deletes the property from that class: the original would lose
    its ``weight``. Give each parametrized module of the copy a class of its own."""
    from torch.nn.utils import parametrize

    for mod in model.modules():
        if parametrize.is_parametrized(mod):
            cls = type(mod)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            mod.__class__ = type(cls.__name__, cls.__bases__, body)


def fit_candidate(spec: dict, model: torch.nn.Module, st: dict, epochs: int, token: int) -> None:
    """``fit`` for one search/HPO candidate: scored by its kept (best) epoch.

    A candidate whose loss diverges reports a failure and ends normally: retrying a
    deterministic divergence would only burn epochs, and the search goes on either way.
    """
    try:
        fit(spec, model, st, epochs, token=token)
    except Diverged as e:
        session.report({"token": token, "epoch": epochs, "score": float("nan"), "failed": str(e)})

