"""One candidate of the ``activation_search`` stage (Stage 1 of SAFS).

A candidate is a genome (slot -> operator). It starts from the stage's input model (masks
included), gets the genome's operators, and fine-tunes ``epochs_per_candidate`` epochs with
the sparse method attached, so pruned weights stay zero. Its score is the best validation
accuracy over its epochs (as in the original); ``model.pt`` holds that epoch's weights.

Under the ``oneshot`` algorithm the stage's one candidate is a mixture-training run instead
(``safs.stages.oneshot``).
"""

from __future__ import annotations

from safs import model_file
from safs.stages.train import fit_candidate


def run_trial(spec: dict, candidate: dict) -> None:
    from safs.activations import apply_genome, set_scales_trainable

    st = spec["stage"]
    from safs.search import is_one_trial

    if is_one_trial(st["algorithm"]):
        from safs.stages import oneshot

        return oneshot.run_trial(spec, candidate)
    model, _ = model_file.load_model(spec["input"])
    apply_genome(model, candidate["genome"])
    set_scales_trainable(model, st["scales_trainable"])
    fit_candidate(spec, model, st, st["epochs_per_candidate"], candidate["token"])
