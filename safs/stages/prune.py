"""The ``prune`` stage: the sparse method's one-shot prune of the input model, then an
evaluation of the pruned, not yet fine-tuned network (the "Pruned" column)."""

from __future__ import annotations

import time


from safs import model_file
from safs.stages import common, session
from safs.training.loop import autocast_for, evaluate


def run_trial(spec: dict) -> None:
    from safs.data import batches
    from safs.sparsity import create_method

    from safs.training.measure import weight_sparsity

    t0 = time.perf_counter()
    common.seed_trial(spec)
    st, sp = spec["stage"], spec["sparsity"]
    device = common.trial_device(spec)
    ds = common.dataset(spec, device)
    model, _ = model_file.load_model(spec["input"])
    model = common.prepare_for_device(model, device)
    method = create_method(sp["method"], sp["target"], sp["options"])
    model = method.attach(model)
    method.prune(model, st["target"])
    model = method.finalize(model)
    autocast = lambda: autocast_for(device)  # noqa: E731
    val_loss, val_acc = evaluate(model, batches(ds, "val", st["eval_batch_size"], train=False).epoch(0), autocast=autocast)
    _, test_acc = evaluate(model, batches(ds, "test", st["eval_batch_size"], train=False).epoch(0), autocast=autocast)
    metrics = {"epoch": 0, "epochs": 0, "start_epoch": 0, "val_loss": val_loss, "val_acc": val_acc,
               "test_acc": test_acc, "sparsity": weight_sparsity(model), "selected_epoch": 0,
               "epoch_s": time.perf_counter() - t0}
    with common.checkpoint_dir() as d:
        model_file.save_model(d / "model.pt", model, model_file.model_meta(spec, ds), sp["method"])
        common.write_history(d, [metrics])
        session.report(metrics, d)
