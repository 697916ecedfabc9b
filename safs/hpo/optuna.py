"""Optuna as an ask/tell optimizer for the Tune bridge, over a ConfigSpace space.

The study is in memory (no database) and built lazily, so the object pickles cheaply (Ray
Tune pickles the searcher into ``tuner.pkl``). Its state for a resume is plain data: every
finished trial (params, distributions via ``optuna.distributions.distribution_to_json``,
value, state) and the outstanding asks. ``load_state_dict`` replays the finished trials into
a new study with ``study.add_trial`` and re-creates each outstanding ask as a RUNNING trial
(``create_trial(state=RUNNING)`` + ``add_trial``, which Optuna 5.0 accepts), so its later
``tell`` still lands.

The ConfigSpace space is sampled define-by-run: hyperparameters are visited in the space's
topological order and one whose conditions do not hold for the values chosen so far is
skipped (absent from the config, as in ConfigSpace). Floats and integers become
``suggest_float``/``suggest_int`` over their bounds (with ``log``; priors such as
``Normal``/``Beta`` and categorical ``weights`` are ignored), categoricals and ordinals
``suggest_categorical``, constants are copied. Forbidden clauses are honoured by rejection:
a sampled config that violates one is told to the study as FAIL and sampling retries; such
internal trials never get a token.

With a stage directory (``use_directory``, which the search stage calls before it restores
the searcher) the study lives in an Optuna ``JournalStorage`` file, ``optuna_journal.log``, so
``optuna-dashboard`` and ``optuna.load_study`` open it. The searcher's JSON state stays the
source of truth: every build of the study (a new stage, a resume, an unpickled copy) starts
the journal afresh and replays the state into it, so it never holds a trial twice and always
matches the study the search asks and tells.

Trial 0 is the space's default configuration (enqueued with ``study.enqueue_trial``), so the
search always scores the defaults first, as the SMAC backend does. ``origin(token)`` says so:
``default`` for that trial, ``sampler`` for every later one.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import warnings
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safs.hpo.backends import space_digest
from safs.hpo.base import TokenLedger
from safs.io import plain
from safs.search.base import finite_score

if TYPE_CHECKING:  # pragma: no cover
    from ConfigSpace import ConfigurationSpace

#: modules a sampler needs beyond optuna itself (it constructs without them, then fails at sampling)
SAMPLER_REQUIRES = {"CmaEsSampler": ("cmaes",), "GPSampler": ("torch", "scipy")}
#: samplers that log each independently sampled parameter unless told not to (in TPESampler the
#: switch is deprecated since Optuna 4.9 and TPE does not warn by default)
QUIET_INDEPENDENT_SAMPLING = ("QMCSampler", "GPSampler", "CmaEsSampler")
MAX_FORBIDDEN_RETRIES = 100
JOURNAL = "optuna_journal.log"  # the study, in a stage directory (see use_directory)


def sampler_names() -> list[str]:
    """Sampler classes usable by name (``optuna.samplers.*Sampler``, abstract bases excluded)."""
    import optuna.samplers

    return sorted(name for name in dir(optuna.samplers)
                  if name.endswith("Sampler") and not name.startswith("Base")
                  and inspect.isclass(getattr(optuna.samplers, name)))


class OptunaOptimizer(TokenLedger):
    """An in-memory Optuna study (direction maximize) over a ConfigSpace space.

    ``sampler`` names a class in ``optuna.samplers`` (``TPESampler``, ``RandomSampler``,
    ``QMCSampler``, ``GPSampler``, ``CmaEsSampler`` with ``cmaes`` installed, ...);
    ``sampler_options`` are its keyword arguments, plus ``seed=seed`` when it takes one and,
    for QMC/GP/CMA-ES, ``warn_independent_sampling=False`` (conditional hyperparameters make
    the space dynamic; those samplers would log a warning on every trial).
    A failed trial (score ``None``/NaN/inf) is told as ``TrialState.FAIL``.
    """

    name = "optuna"

    def __init__(self, configspace: ConfigurationSpace, seed: int, *, n_trials: int = 20,
                 sampler: str = "TPESampler", sampler_options: dict[str, Any] | None = None) -> None:
        from ConfigSpace import ConfigurationSpace

        if not isinstance(configspace, ConfigurationSpace):
            raise TypeError("optuna: configspace must be a ConfigSpace ConfigurationSpace")
        if len(configspace) == 0:
            raise ValueError("optuna: the configuration space has no hyperparameters")
        if isinstance(n_trials, bool) or not isinstance(n_trials, Integral) or n_trials < 1:
            raise ValueError(f"optuna: n_trials must be an integer >= 1, not {n_trials!r}")
        if not isinstance(sampler, str):
            raise ValueError(f"optuna: sampler must be the name of an optuna.samplers class, not {sampler!r}")
        if sampler_options is not None and not isinstance(sampler_options, dict):
            raise ValueError("optuna: sampler_options must be a mapping of keyword arguments")
        self.configspace = configspace
        self.seed = int(seed)
        self.n_trials = int(n_trials)
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.journal_path: Path | None = None  # see use_directory
        self._plan = _space_plan(configspace)  # validates the hyperparameter and condition types
        self._make_sampler()  # validates the sampler name, its options and its extra modules
        self._open_ledger()  # outstanding: token -> {config, number, params, distributions, origin}
        self._reset_live()

    def use_directory(self, directory: str | Path) -> None:
        """Keep the study in ``<directory>/optuna_journal.log`` (rebuilt from the state if the
        study exists already)."""
        state = self.state_dict() if self._study is not None else None
        self.journal_path = Path(directory) / JOURNAL
        if state is not None:
            self.load_state_dict(state)

    # --- the protocol -------------------------------------------------------------------
    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """``(token, config)``; ``None`` once ``n_trials`` have been asked."""
        if self._next_token >= self.n_trials:
            return None
        study = self._get_study()
        from optuna.trial import TrialState

        for _ in range(MAX_FORBIDDEN_RETRIES):
            trial = study.ask()
            config = self._sample(trial)
            if self._allowed(config):
                break
            study.tell(trial, state=TrialState.FAIL)  # teaches the sampler to avoid the region
        else:
            raise RuntimeError(f"optuna: {MAX_FORBIDDEN_RETRIES} samples in a row violated the space's "
                               "forbidden clauses")
        token = self._take_token()
        self._outstanding[token] = {"config": dict(config), "number": trial.number, "origin": _origin_of(token)}
        self._trials[token] = trial
        return token, dict(config)

    def tell(self, token: int, score: float | None) -> None:
        """Report a trial's score (maximised); ``None``/NaN/inf = failed. Unknown or already
        told tokens are ignored."""
        token = self._pending(token)
        if token is None:
            return
        entry = self._outstanding[token]
        study = self._get_study()
        from optuna.trial import TrialState

        trial = self._trials.get(token, entry["number"])
        value = finite_score(score)
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
        self._told(token, value)
        self._trials.pop(token, None)

    def done(self) -> bool:
        return self._next_token >= self.n_trials and not self._outstanding

    # --- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-compatible: the study's finished trials, the outstanding asks, the history."""
        from optuna.distributions import distribution_to_json
        from optuna.trial import TrialState

        finished = []
        if self._study is not None:
            for t in self._study.get_trials(deepcopy=False):
                if t.state in (TrialState.COMPLETE, TrialState.FAIL):
                    finished.append({"params": {k: plain(v) for k, v in t.params.items()},
                                     "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
                                     "value": None if t.state == TrialState.FAIL else float(t.value),
                                     "state": t.state.name})
        else:
            finished = copy.deepcopy(self._restore.get("finished", [])) if self._restore else []
        outstanding = []
        for token, entry in self._outstanding.items():
            trial = self._frozen(token)
            if trial is not None:
                params = {k: plain(v) for k, v in trial.params.items()}
                dists = {k: distribution_to_json(d) for k, d in trial.distributions.items()}
            else:  # not rebuilt yet since a load: keep what was loaded
                params, dists = entry["params"], entry["distributions"]
            outstanding.append({"token": token, "config": dict(entry["config"]), "params": params,
                                "distributions": dists, "origin": entry.get("origin")})
        return {**self._ledger_state(), "finished": finished, "outstanding": outstanding}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of an optimizer built with the same arguments: a new
        study holds the finished trials, outstanding tokens can still be told, asks continue up
        to ``n_trials`` in all. The sampler is re-created with a seed derived from ``seed`` and
        the number of finished trials, so the continuation is deterministic but is not the
        sequence an uninterrupted run would have produced."""
        self._check_state(state)
        self._reset_live()
        self._load_ledger(state)
        self._outstanding = {int(e["token"]): {"config": dict(e["config"]), "number": None,
                                               "params": e["params"], "distributions": e["distributions"],
                                               "origin": e.get("origin")}
                             for e in state["outstanding"]}
        self._restore = {"finished": copy.deepcopy(state["finished"])}
        self._get_study()  # rebuild now: a bad state fails here, not in the middle of a run

    # --- pickling -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        if self._study is not None:
            state = self.state_dict()
            d["_restore"] = {"finished": state["finished"]}
            d["_outstanding"] = {int(e["token"]): {"config": e["config"], "number": None, "params": e["params"],
                                                   "distributions": e["distributions"], "origin": e["origin"]}
                                 for e in state["outstanding"]}
        for key in ("_study", "_trials"):
            d.pop(key, None)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        restore = d.get("_restore")
        self.__dict__.update(d)
        self._study = None
        self._trials = {}
        self._restore = restore

    # --- internals ----------------------------------------------------------------------
    def _reset_live(self) -> None:
        self._study = None
        self._trials: dict[int, Any] = {}  # token -> live optuna Trial
        self._restore: dict[str, Any] | None = None  # finished trials to replay at the next build

    def _settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "n_trials": self.n_trials, "sampler": self.sampler,
                "sampler_options": _jsonable(self.sampler_options), "space_sha256": space_digest(self.configspace)}

    def _make_sampler(self, restored: int = 0):
        """The sampler; after a restore of ``restored`` finished trials its seed moves on
        (``seed + 1_000_003 * restored``), so the sampler's random stream does not replay the
        samples it already drew before the restore."""
        import optuna

        names = sampler_names()
        if self.sampler not in names:
            raise ValueError(f"optuna: unknown sampler {self.sampler!r}; accepted: {', '.join(names)}")
        missing = [m for m in SAMPLER_REQUIRES.get(self.sampler, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"optuna: sampler {self.sampler} needs the module(s) {', '.join(missing)} "
                             "(pip install optuna[optional])")
        cls = getattr(optuna.samplers, self.sampler)
        options = dict(self.sampler_options)
        if "seed" in inspect.signature(cls).parameters and "seed" not in options:
            options["seed"] = (self.seed + 1_000_003 * restored) % 2**32
        if self.sampler in QUIET_INDEPENDENT_SAMPLING:
            # conditional spaces are dynamic: these relative samplers sample the conditional
            # hyperparameters independently and would log a warning about it on every trial
            options.setdefault("warn_independent_sampling", False)
        try:
            with warnings.catch_warnings():  # e.g. the ExperimentalWarning of some samplers' options
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return cls(**options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"optuna: cannot build {self.sampler}({_kwargs(options)}): {err}") from None

    def _get_study(self):
        if self._study is None:
            self._build()
        return self._study

    def _build(self) -> None:
        import optuna
        from optuna.distributions import json_to_distribution
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        restore = self._restore or {}
        sampler = self._make_sampler(restored=len(restore.get("finished", [])))
        study = optuna.create_study(direction="maximize", sampler=sampler, **self._storage())
        for t in restore.get("finished", []):
            dists = {k: json_to_distribution(v) for k, v in t["distributions"].items()}
            state = TrialState[t["state"]]
            study.add_trial(create_trial(params=dict(t["params"]), distributions=dists, state=state,
                                         value=t["value"] if state == TrialState.COMPLETE else None))
        for token in sorted(self._outstanding):
            entry = self._outstanding[token]
            if entry.get("params") is None:
                continue
            dists = {k: json_to_distribution(v) for k, v in entry["distributions"].items()}
            study.add_trial(create_trial(params=dict(entry["params"]), distributions=dists,
                                         state=TrialState.RUNNING))
            entry["number"] = study.get_trials(deepcopy=False)[-1].number
            self._trials.pop(token, None)
        if self._next_token == 0:
            study.enqueue_trial(self._default_params())  # trial 0: the space's defaults
        self._study = study
        self._restore = None

    def _storage(self) -> dict[str, Any]:
        """A fresh journal file for the study about to be built (nothing, without a directory)."""
        if self.journal_path is None:
            return {}
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = self.journal_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # the JSON state is replayed into it: no trial twice
        return {"storage": JournalStorage(JournalFileBackend(str(path))), "study_name": path.parent.name or "safs"}

    def _frozen(self, token: int):
        if self._study is None:
            return None
        number = self._outstanding[token]["number"]
        if number is None:
            return None
        return self._study.get_trials(deepcopy=False)[number]

    def _sample(self, trial) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for step in self._plan:
            name, kind = step["name"], step["kind"]
            if step["conditions"] and not _holds(step["conditions"], config):
                continue
            if kind == "constant":
                config[name] = step["value"]
            elif kind == "float":
                config[name] = float(trial.suggest_float(name, step["low"], step["high"], log=step["log"]))
            elif kind == "int":
                config[name] = int(trial.suggest_int(name, step["low"], step["high"], log=step["log"]))
            else:
                config[name] = plain(trial.suggest_categorical(name, step["choices"]))
        return config

    def _allowed(self, config: dict[str, Any]) -> bool:
        if not self.configspace.forbidden_clauses:
            return True
        from ConfigSpace import Configuration, ForbiddenValueError

        try:
            Configuration(self.configspace, values=config)
        except ForbiddenValueError:
            return False
        return True

    def _default_params(self) -> dict[str, Any]:
        default = {k: plain(v) for k, v in dict(self.configspace.get_default_configuration()).items()}
        return {step["name"]: default[step["name"]] for step in self._plan
                if step["kind"] != "constant" and step["name"] in default}


def _origin_of(token: int) -> str:
    """Token 0 is the enqueued default: ``_build`` enqueues it whenever nothing has been asked
    yet, and the study hands an enqueued trial out before sampling."""
    return "default" if token == 0 else "sampler"


def _space_plan(space: ConfigurationSpace) -> list[dict[str, Any]]:
    """Each hyperparameter in topological order with how to sample it and when it is active."""
    from ConfigSpace.hyperparameters import (
        CategoricalHyperparameter,
        Constant,
        FloatHyperparameter,
        IntegerHyperparameter,
        OrdinalHyperparameter,
    )

    plan = []
    for name, hp in space.items():  # ConfigSpace keeps the space in topological order
        step: dict[str, Any] = {"name": name, "conditions": list(space.parent_conditions_of[name])}
        if isinstance(hp, Constant):
            step.update(kind="constant", value=plain(hp.value))
        elif isinstance(hp, FloatHyperparameter):
            step.update(kind="float", low=float(hp.lower), high=float(hp.upper), log=bool(hp.log))
        elif isinstance(hp, IntegerHyperparameter):
            step.update(kind="int", low=int(hp.lower), high=int(hp.upper), log=bool(hp.log))
        elif isinstance(hp, CategoricalHyperparameter):
            step.update(kind="categorical", choices=tuple(plain(c) for c in hp.choices))
        elif isinstance(hp, OrdinalHyperparameter):
            step.update(kind="categorical", choices=tuple(plain(c) for c in hp.sequence))
        else:
            raise ValueError(f"optuna: hyperparameter {name!r} has unsupported type {type(hp).__name__}")
        plan.append(step)
    return plan


class _Sampled(dict):
    """Values sampled so far; an absent (inactive) hyperparameter reads as ConfigSpace's NotSet."""

    def __missing__(self, key: str) -> Any:
        from ConfigSpace.types import NotSet

        return NotSet


def _holds(conditions: list[Any], config: dict[str, Any]) -> bool:
    """Whether all of a child's conditions hold for the values sampled so far. ConfigSpace
    evaluates them itself (``satisfied_by_value``: any condition or conjunction type, ordinal
    comparisons by rank); an inactive parent fails a condition."""
    values = _Sampled(config)
    return all(bool(c.satisfied_by_value(values)) for c in conditions)


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=repr, sort_keys=True))


def _kwargs(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())
