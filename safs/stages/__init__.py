"""One module per stage kind; ``trainable`` is the single Ray Tune entry point."""

from __future__ import annotations

import importlib

STAGE_MODULES = {
    "train": "safs.stages.train",
    "prune": "safs.stages.prune",
    "activation_search": "safs.stages.activation_search",
    "hpo": "safs.stages.hpo",
}


def trainable(config: dict, registered: tuple = ()) -> None:
    """Ray Tune function trainable: runs one trial of the stage described by ``config['spec']``
    (``registered``: the driver's in-process registrations, ``safs.plugins.registered()``)."""
    from safs.plugins import install

    install(registered)
    run_stage_trial(config)


def run_stage_trial(config: dict) -> None:
    """One trial of the stage ``config['spec']`` describes, reporting through the installed
    session (a Tune trial's, or one worker's of a multi-worker trial: ``safs.tune.workers``)."""
    from safs.stages.common import threads_from_resources

    threads_from_resources()
    # ``resume_from``: trial directories of earlier attempts, newest first, whose checkpoints
    # a continued trial may start from (see safs.stages.common.resume_point).
    spec = {**config["spec"], "resume_from": config.get("resume_from") or []}
    # Search stages add the searcher's suggestion (e.g. ``candidate``) next to the spec.
    params = {k: v for k, v in config.items() if k not in ("spec", "resume_from")}
    importlib.import_module(STAGE_MODULES[spec["kind"]]).run_trial(spec, **params)
