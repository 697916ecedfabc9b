"""One trial of the ``hpo`` stage (Stage 2 of SAFS).

A trial is a configuration from the stage's HPO space (optimizer, learning rate, schedule,
...). It starts from the stage's input model (the Stage 1 genome and weights, or the
retrained model for "Stage 2 only"), learns the slots' α, β with the network when
``scales_trainable`` (their own parameter group), and trains ``epochs_per_trial`` epochs,
or its ``budget`` under multi-fidelity SMAC. Score: best validation accuracy.
"""

from __future__ import annotations

from safs import model_file
from safs.hpo.space import trial_settings
from safs.stages.train import fit_candidate


def run_trial(spec: dict, candidate: dict) -> None:
    from safs.activations import set_scales_trainable

    st = spec["stage"]
    config = candidate["config"]
    model, _ = model_file.load_model(spec["input"])
    set_scales_trainable(model, st["scales_trainable"])
    epochs = max(1, round(config["budget"])) if "budget" in config else st["epochs_per_trial"]
    fit_candidate(spec, model, trial_settings(st, config), epochs, candidate["token"])
