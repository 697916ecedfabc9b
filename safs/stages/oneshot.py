"""The one trial of an ``activation_search`` stage whose algorithm is ``oneshot``.

It starts from the stage's input model (masks included), turns every activation slot into a
mixture over the stage's choices (``safs.activations.mixture``), and trains
``epochs_per_candidate`` epochs with the sparse method attached: weight steps on the train
split with the stage's optimizer and schedule, logit steps with their own Adam, on a
validation batch before each weight step (``arch_split: val``) or on the same training batch
(``arch_split: train``); the first ``warmup_epochs`` step the weights only.

Every epoch ends with the discretized network (each slot set to its largest weight) being
evaluated and checkpointed as ``model.pt``, the operator weights of every slot appended to
the mixture history, and a checkpoint of the whole training state (both optimizers
included), so a killed trial continues from its last epoch like a train stage. The stage
keeps the last epoch: the network the mixture training ends with, discretized.
"""

from __future__ import annotations

import copy
import json
import time

import torch
import torch.nn.functional as F

from safs import model_file
from safs.io import torch_save
from safs.stages import common, session
from safs.stages.train import MODEL_FILE, finalized
from safs.training.loop import Diverged, TrainTally, autocast_for, evaluate
from safs.training.measure import weight_sparsity
from safs.training.optim import optimizer_for, param_groups, scheduler_for, step_scheduler

MIXTURE_FILE = "mixture.json"  # in every checkpoint: [{epoch, slot, operator, weight}]


def oneshot_options(st: dict) -> dict:
    """The stage's options with the algorithm's defaults filled in (validated by the optimizer)."""
    from safs.search import GenomeSpace, create_optimizer

    space = GenomeSpace(slots=("a",), choices=tuple(st["choices"]))
    return create_optimizer("oneshot", space, seed=0, options=st["options"]).options


def run_trial(spec: dict, candidate: dict) -> None:
    from safs.activations import set_scales_trainable

    st = spec["stage"]
    token = candidate["token"]
    model, _ = model_file.load_model(spec["input"])
    set_scales_trainable(model, st["scales_trainable"])
    try:
        search(spec, model, st, st["epochs_per_candidate"], token)
    except Diverged as e:
        session.report({"token": token, "epoch": st["epochs_per_candidate"], "score": float("nan"), "failed": str(e)})


def discretized(method, model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, str]]:
    """The network the stage would export now: finalized by the method, every mixture slot
    replaced by its largest-weight operator. The training model is not touched."""
    from safs.activations.mixture import discretize

    final = finalized(method, model)
    if final is model:
        final = copy.deepcopy(model)
    return final, discretize(final)


def search(spec: dict, model: torch.nn.Module, st: dict, epochs: int, token: int) -> None:
    from safs.activations.mixture import annealed_tau, arch_parameters, mixture_table, set_tau, to_mixture
    from safs.data import batches

    opts = oneshot_options(st)
    common.seed_trial(spec, token)
    device = common.trial_device(spec)
    ds = common.dataset(spec, device)
    to_mixture(model, st["choices"], opts["relaxation"])
    model = common.prepare_for_device(model, device)
    method, model = common.attach_method(spec, model)

    arch = arch_parameters(model)
    arch_ids = {id(p) for p in arch}
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in arch_ids]} for g in param_groups(model, st)]
    groups = [g for g in groups if g["params"]]
    if method is not None:
        groups = method.param_groups(model, groups)
    optimizer = optimizer_for(groups, st)
    scheduler = scheduler_for(optimizer, st, epochs)
    arch_optimizer = torch.optim.Adam(arch, lr=opts["arch_lr"], betas=(0.5, 0.999),
                                      weight_decay=opts["arch_weight_decay"])

    start, history, mixture, kept = 0, [], [], None
    with common.resume_point(spec, device) as (state, state_dir):
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            arch_optimizer.load_state_dict(state["arch_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if method is not None:
                method.load_state_dict(state["method"])
                method.attach(model)
            start, history, mixture = state["epoch"], state["history"], state["mixture"]
            kept = torch.load(state_dir / MODEL_FILE, map_location="cpu", weights_only=True)
            if start >= epochs:
                session.report(history[-1], state_dir)
                return

    seed = spec["seed"] * 1000 + spec["index"]
    train_batches = batches(ds, "train", st["batch_size"], train=True, seed=seed, augment=st["augment"])
    arch_batches = batches(ds, "val", st["batch_size"], train=True, seed=seed + 1, augment=False)
    val_batches = batches(ds, "val", st["eval_batch_size"], train=False)
    test_batches = batches(ds, "test", st["eval_batch_size"], train=False)
    autocast = lambda: autocast_for(device)  # noqa: E731
    meta = model_file.model_meta(spec, ds)
    method_name = spec["sparsity"] and spec["sparsity"]["method"]
    if method is not None:
        method.on_train_start(len(train_batches), epochs, start)

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        common.seed_trial(spec, token, epoch)
        tau = annealed_tau(epoch, epochs, opts["tau_start"], opts["tau_end"])
        set_tau(model, tau)
        arch_on = epoch >= opts["warmup_epochs"]
        lr = optimizer.param_groups[0]["lr"]
        if method is not None:
            method.on_epoch_start(epoch)
        train_loss, train_acc = search_epoch(
            model, train_batches.epoch(epoch), _cycle(arch_batches, epoch), optimizer,
            arch_optimizer if arch_on else None, method, arch_split=opts["arch_split"],
            label_smoothing=st["label_smoothing"], autocast=autocast)
        if method is not None:
            method.on_epoch_end(epoch)
        step_scheduler(scheduler, train_loss)
        mix_val_loss, mix_val_acc = evaluate(model, val_batches.epoch(0), autocast=autocast)
        final, genome = discretized(method, model)
        val_loss, val_acc = evaluate(final, val_batches.epoch(0), autocast=autocast)
        _, test_acc = evaluate(final, test_batches.epoch(0), autocast=autocast)
        sparsity = weight_sparsity(final)
        kept = model_file.model_blob(final, meta, method_name)
        del final
        mixture.extend({"epoch": epoch + 1, **row} for row in mixture_table(model))
        metrics = {"token": token, "epoch": epoch + 1, "epochs": epochs, "start_epoch": start, "lr": lr,
                   "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                   "test_acc": test_acc, "sparsity": sparsity, "selected_epoch": epoch + 1, "select": "last",
                   "score": val_acc, "mixture_val_loss": mix_val_loss, "mixture_val_acc": mix_val_acc,
                   "tau": tau, "arch_active": arch_on,
                   "genome": json.dumps(genome), "epoch_s": time.perf_counter() - t0}
        history.append(metrics)
        with common.checkpoint_dir() as d:
            torch.save({"epoch": epoch + 1, "history": history, "mixture": mixture, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "arch_optimizer": arch_optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "method": method.state_dict() if method is not None else {}}, d / "state.pt")
            torch_save(kept, d / MODEL_FILE)
            (d / MIXTURE_FILE).write_text(json.dumps(mixture))
            common.write_history(d, history)
            session.report(metrics, d)


def _cycle(batches, epoch: int):
    """Validation batches for the logit steps, reshuffled each pass, the same after a resume."""
    k = 0
    while True:
        for b in batches.epoch(epoch * 1000 + k):
            yield b
        k += 1


def search_epoch(model, batches, arch_batches, optimizer, arch_optimizer, method=None, *, arch_split: str = "val",
                 label_smoothing: float = 0.0, autocast=None) -> tuple[float, float]:
    """One pass over the training batches: a logit step (``arch_optimizer``; none while warming
    up), then a weight step with the sparse method's hooks. Returns (mean loss, accuracy)."""
    import contextlib

    autocast = autocast or contextlib.nullcontext
    arch = [p for g in arch_optimizer.param_groups for p in g["params"]] if arch_optimizer is not None else []
    model.train()
    tally = TrainTally()
    for x, y in batches:
        if arch_optimizer is not None and arch_split == "val":
            xv, yv = next(arch_batches)
            with autocast():
                arch_loss = F.cross_entropy(model(xv), yv)
            # Gradients for the logits only: the weights' .grad is left alone.
            grads = torch.autograd.grad(arch_loss, arch)
            for p, g in zip(arch, grads):
                p.grad = g
            arch_optimizer.step()
        with autocast():
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        joint = arch_optimizer is not None and arch_split == "train"
        if joint:
            arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method is not None:
            method.before_step()
        optimizer.step()
        if method is not None:
            method.after_step()
        if joint:
            arch_optimizer.step()
        for p in arch:  # never carried into the next logit step
            p.grad = None
        tally.add(loss, out, y)
    return tally.result()
