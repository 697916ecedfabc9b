"""SMAC 2 (random-forest BO, or Hyperband) as an ask/tell optimizer for the Tune bridge.

SMAC is driven through its own ask/tell interface; nothing here calls ``optimize()``. The
facade is built lazily (the first ``ask``/``tell``/``state_dict`` after construction or
unpickling), so the object pickles in microseconds: Ray Tune pickles the searcher into
``tuner.pkl`` when the ``Tuner`` is constructed.

Scores are maximised (validation accuracy); SMAC minimises ``cost = 1 - score``, the cost
the original SAFS used (``1 - best_val_acc``).

SMAC 2.4.1 traps this module works around (see the orchestration notes, §2):

- ``tell`` needs the exact ``TrialInfo`` that ``ask`` returned. SMAC's configurations hold
  ``np.str_`` values and ``Configuration.__hash__`` is ``hash(repr(...))``, so a rebuilt
  configuration with plain ``str`` values is ``==`` but hashes differently, which corrupts
  the runhistory's running-trial bookkeeping. Live ``TrialInfo`` objects are kept per token;
  after a restore they are looked up among SMAC's running trials by value.
- A failed trial cannot be told with cost ``inf``: the runhistory encoder turns it into NaN
  and the sklearn random forest raises ``ValueError: Input y contains NaN`` on the next
  model fit. Failures are told as ``StatusType.CRASHED`` with a finite cost (see
  ``failed_cost``).
- ``optimizer.budget_exhausted`` asserts in pure ask/tell use and ``ask()`` keeps returning
  trials past ``n_trials``: the trial budget is counted here.
- The facade reconfigures the root logger unless ``logging_level=False``.
- Reopening an output directory whose scenario differs calls ``input()`` (``EOFError`` under
  Ray, a hang with an open stdin). Every build uses a new private directory, and a snapshot
  is checked against the current scenario before SMAC is allowed to read it.
- SMAC seeds the ``ConfigurationSpace`` it is given; it gets a private copy so two
  optimizers sharing one space cannot disturb each other's random streams.
- SMAC's local search orders its start points through ``set(configurations)``; with string
  hashing that order (and every model-based proposal) changed with ``PYTHONHASHSEED``, i.e.
  from process to process for the same seed. The start points are sorted (see
  ``_ordered_maximizer_class``), so a seed gives the same search in every process.
- The facade's random forest (sklearn, ``max_leaf_nodes=2**20``, ``n_jobs=-1``) took
  1.5-4 s per fit on a few dozen points on a loaded 2-core machine: sklearn's best-first
  builder allocates node arrays sized for ``max_leaf_nodes``, and joblib polls threads for 10
  tiny trees. The same forest is built with a leaf cap it cannot reach (a tree has at most
  as many leaves as observations, so the trees are identical) and ``n_jobs=1``: ~5 ms.

The first trial is the space's default configuration (the stage's own settings, see
``safs.hpo.space.with_defaults``), with either facade. SMAC 2.4.1 only adds the default when the
scenario asks for it (``use_default_config``, off by default) and then appends it *after* the
initial design; the design is reordered so it comes first (see ``_default_first``). Under
``multi_fidelity`` the default's first trial runs at the lowest budget, like every
configuration of Hyperband's first bracket.

Every asked configuration carries its origin (``origin(token)``): ``default``,
``initial_design``, ``model`` (maximising the acquisition function) or ``random`` (SMAC's
random interleaving and its random fallbacks), read from SMAC's ``Configuration.origin``
labels (see ``smac_origin``). A configuration asked again at a higher budget keeps the origin
it was first asked with: SMAC relabels an unlabelled configuration "Custom" when it is told.

Model fits: SMAC's facades refit the model every 8 proposals (``retrain_after=8``); with
20-trial budgets and trials that train for minutes, refitting before every proposal
(``retrain_after=1``, the default here, like SMAC 1.x used by the original SAFS) finds better
configurations at a cost of well under a second per ask.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import tempfile
import warnings
import weakref
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safs.hpo.backends import space_digest
from safs.hpo.base import TokenLedger
from safs.io import plain
from safs.search.base import finite_score

if TYPE_CHECKING:  # pragma: no cover
    from ConfigSpace import ConfigurationSpace

FACADES = ("hpo", "multi_fidelity")
RUN_NAME = "safs_smac"  # SMAC writes to <run dir>/<RUN_NAME>/<seed>/
STATE_FILES = ("runhistory.json", "intensifier.json", "optimization.json", "scenario.json", "configspace.json")
FAILED_COST = 1.0  # cost of a failed trial: score 0, the worst validation accuracy
DEFAULT_LABEL = "Initial Design: Default configuration"  # SMAC's own label for the default


def smac_origin(label: str | None) -> str:
    """One of ``default``, ``initial_design``, ``model``, ``random`` for SMAC's origin label.

    SMAC 2.4.1 labels: "Initial Design: Default configuration", "Initial Design: Sobol" (or
    "Random", "Latin Hypercube", ...), "Acquisition Function Maximizer: Local Search" and
    "...: Random Search (sorted)" (ranked by the model), "Random Search" (the random design's
    interleaving), "Random Search (max retries, no candidates)". The config selector's plain
    random sample before the model has data carries no label (``None``; "Custom" once told)."""
    text = (label or "").lower()
    if "default" in text:
        return "default"
    if text.startswith("initial design"):
        return "initial_design"
    if "acquisition" in text and not text.endswith(": random search"):  # unsorted = unranked
        return "model"
    return "random"


class SMACOptimizer(TokenLedger):
    """SMAC 2 over a ConfigSpace ``ConfigurationSpace`` (conditions allowed).

    - ``facade="hpo"``: ``HyperparameterOptimizationFacade`` (random forest, EI, Sobol
      initial design of ``n_init`` configurations). Every trial trains the full epochs.
    - ``facade="multi_fidelity"``: ``MultiFidelityFacade`` (Hyperband with ``eta`` between
      ``min_budget`` and ``max_budget`` epochs, random initial design). Asked configs carry
      ``"budget"`` (a float; the trial trains ``round(budget)`` epochs); every
      (config, budget) evaluation is one of the ``n_trials``.

    ``n_init`` defaults to ``max(1, min(n_trials // 4, 10))`` (the original SAFS used 5 for
    20 trials) and is honoured as given (SMAC's own 25 % cap is lifted). It counts the default
    configuration, the first trial: the initial design is the default plus ``n_init - 1``
    Sobol (``hpo``) or random (``multi_fidelity``) configurations. ``retrain_after``:
    proposals per model fit (see the module docstring). ``workdir`` is where SMAC's output
    directory is created: a fresh private ``safs_smac_*`` directory per facade build (under
    the system temp directory by default), removed when the object is garbage-collected or
    at exit. The resumable state travels in ``state_dict()``, never in that directory.

    A failed trial (score ``None``/NaN/inf) is told as ``CRASHED`` with cost
    ``max(1, worst finite cost told so far)``: as bad as the worst trial, finite so the
    random forest still fits.
    """

    name = "smac"

    def __init__(self, configspace: ConfigurationSpace, seed: int, *, n_trials: int = 20, facade: str = "hpo",
                 n_init: int | None = None, min_budget: float | None = None, max_budget: float | None = None,
                 eta: int = 3, retrain_after: int = 1, workdir: str | None = None) -> None:
        from ConfigSpace import ConfigurationSpace

        if not isinstance(configspace, ConfigurationSpace):
            raise TypeError("smac: configspace must be a ConfigSpace ConfigurationSpace")
        if len(configspace) == 0:
            raise ValueError("smac: the configuration space has no hyperparameters")
        if facade not in FACADES:
            raise ValueError(f"smac: unknown facade {facade!r}; accepted: {', '.join(FACADES)}")
        if isinstance(n_trials, bool) or not isinstance(n_trials, Integral) or n_trials < 1:
            raise ValueError(f"smac: n_trials must be an integer >= 1, not {n_trials!r}")
        if n_init is not None and (isinstance(n_init, bool) or not isinstance(n_init, Integral)
                                   or not 1 <= n_init <= n_trials):
            raise ValueError(f"smac: n_init must be an integer in [1, n_trials={n_trials}] or null, not {n_init!r}")
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ValueError(f"smac: seed must be an integer >= 0, not {seed!r}")  # SMAC: -1 = unseeded
        if facade == "multi_fidelity":
            if min_budget is None or max_budget is None:
                raise ValueError("smac: facade 'multi_fidelity' needs min_budget and max_budget (epochs)")
            if not all(isinstance(b, Real) and not isinstance(b, bool) for b in (min_budget, max_budget)) \
                    or not 0 < min_budget < max_budget:
                raise ValueError(f"smac: need 0 < min_budget < max_budget, got min_budget={min_budget}, "
                                 f"max_budget={max_budget}")
            if isinstance(eta, bool) or not isinstance(eta, Integral) or eta < 2:
                raise ValueError(f"smac: eta must be an integer >= 2, not {eta!r}")
            if "budget" in configspace:
                raise ValueError("smac: a hyperparameter named 'budget' clashes with the multi-fidelity budget")
        elif min_budget is not None or max_budget is not None:
            raise ValueError("smac: min_budget/max_budget apply only to facade 'multi_fidelity'")
        if isinstance(retrain_after, bool) or not isinstance(retrain_after, Integral) or retrain_after < 1:
            raise ValueError(f"smac: retrain_after must be an integer >= 1, not {retrain_after!r}")
        self.configspace = configspace
        self.seed = int(seed)
        self.n_trials = int(n_trials)
        self.facade = facade
        self.n_init = int(n_init) if n_init is not None else max(1, min(self.n_trials // 4, 10))
        self.min_budget = None if min_budget is None else float(min_budget)
        self.max_budget = None if max_budget is None else float(max_budget)
        self.eta = int(eta)
        self.retrain_after = int(retrain_after)
        self.workdir = None if workdir is None else str(workdir)
        self._open_ledger()  # outstanding: token -> {config, budget, seed, instance, origin}
        self._exhausted = False  # SMAC found nothing new to propose
        self._snapshot: dict[str, str] | None = None  # SMAC files to restore at the next build
        self._reset_live()

    # --- the protocol -------------------------------------------------------------------
    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """``(token, config)``; ``None`` once ``n_trials`` have been asked (or SMAC is out of
        new configurations)."""
        if self._next_token >= self.n_trials or self._exhausted:
            return None
        smac = self._facade()
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        try:
            with warnings.catch_warnings():
                # SMAC's local search logs np.mean() of an empty list of timings at debug level
                warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                warnings.filterwarnings("ignore", "invalid value encountered in scalar divide", RuntimeWarning)
                info = smac.ask()
        except (StopIteration, ConfigurationSpaceExhaustedException):
            self._exhausted = True  # the trial generator is finished for good
            return None
        token = self._take_token()
        config = plain(info.config)
        budget = None if info.budget is None else float(info.budget)
        self._outstanding[token] = {"config": config, "budget": budget, "seed": info.seed,
                                    "instance": info.instance, "origin": self._origin_of(config, info)}
        self._infos[token] = info
        out = dict(config)
        if budget is not None:
            out["budget"] = budget
        return token, out

    def tell(self, token: int, score: float | None) -> None:
        """Report a trial's score (maximised); ``None``/NaN/inf = failed. Unknown or already
        told tokens are ignored."""
        token = self._pending(token)
        if token is None:
            return
        smac = self._facade()
        from smac.runhistory.dataclasses import TrialValue
        from smac.runhistory.enumerations import StatusType

        entry = self._outstanding[token]
        info = self._infos.get(token) or self._running_info(entry)
        value = finite_score(score)
        if value is None:
            smac.tell(info, TrialValue(cost=self.failed_cost(), status=StatusType.CRASHED), save=False)
        else:
            smac.tell(info, TrialValue(cost=1.0 - value), save=False)
        self._told(token, value)
        self._infos.pop(token, None)

    def done(self) -> bool:
        """All trials asked (or SMAC exhausted) and told."""
        return not self._outstanding and (self._next_token >= self.n_trials or self._exhausted)

    def failed_cost(self) -> float:
        costs = [1.0 - r["score"] for r in self.history if r["score"] is not None]
        return max([FAILED_COST, *costs])

    # --- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-compatible state: bookkeeping plus a snapshot of SMAC's output files
        (base64)."""
        if self._smac is not None:
            self._smac.optimizer.save()
            out = Path(self._smac.scenario.output_directory)
            files = {name: base64.b64encode((out / name).read_bytes()).decode("ascii")
                     for name in STATE_FILES if (out / name).is_file()}
        else:
            files = copy.deepcopy(self._snapshot)
        return {
            **self._ledger_state(),
            "exhausted": self._exhausted,
            "outstanding": [{"token": token, **copy.deepcopy(entry)} for token, entry in self._outstanding.items()],
            "smac_files": files,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of an optimizer built with the same arguments.

        Told trials stay told (SMAC does not propose them again), outstanding tokens can
        still be told, and asks continue up to ``n_trials`` in all."""
        self._check_state(state)
        self._close()
        self._load_ledger(state)
        self._exhausted = bool(state["exhausted"])
        self._outstanding = {}
        for entry in state["outstanding"]:
            entry = dict(entry)
            token = int(entry.pop("token"))
            self._outstanding[token] = {"config": dict(entry["config"]), "budget": entry["budget"],
                                        "seed": entry["seed"], "instance": entry["instance"],
                                        "origin": entry.get("origin")}
        self._snapshot = copy.deepcopy(state["smac_files"])
        if self._snapshot:
            self._facade()  # rebuild now: a bad snapshot fails here, not in the middle of a run

    # --- pickling: the facade is rebuilt from a snapshot ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        if self._smac is not None:
            d["_snapshot"] = self.state_dict()["smac_files"]
        for key in ("_smac", "_infos", "_run_dir", "_cleanup"):
            d.pop(key, None)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._reset_live()

    # --- internals ----------------------------------------------------------------------
    def _reset_live(self) -> None:
        self._smac = None
        self._infos: dict[int, Any] = {}  # token -> the TrialInfo SMAC handed out
        self._run_dir: Path | None = None
        self._cleanup = None

    def _settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "n_trials": self.n_trials, "facade": self.facade, "n_init": self.n_init,
                "min_budget": self.min_budget, "max_budget": self.max_budget, "eta": self.eta,
                "retrain_after": self.retrain_after,
                "space_sha256": space_digest(self.configspace)}

    def _origin_of(self, config: dict[str, Any], info: Any) -> str:
        """The origin of a configuration asked before (a Hyperband promotion) is the one it was
        first asked with; SMAC's label on it may since have become "Custom"."""
        earlier = [*self.history, *self._outstanding.values()]
        first = next((r.get("origin") for r in earlier if r["config"] == config and r.get("origin")), None)
        return first or smac_origin(info.config.origin)

    def _close(self) -> None:
        """Forget the live facade and remove its directory."""
        if self._cleanup is not None:
            self._cleanup()
        self._reset_live()

    def _facade(self):
        if self._smac is None:
            self._build()
        return self._smac

    def _new_facade(self, run_dir: Path, overwrite: bool):
        from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, Scenario
        from smac.model.random_forest import RandomForest

        space = copy.deepcopy(self.configspace)  # SMAC seeds it; keep the caller's untouched
        # use_default_config: SMAC adds the default to the initial design (and records that in
        # scenario.json, so a snapshot taken without it is refused rather than resumed).
        if self.facade == "hpo":
            scenario = Scenario(space, name=RUN_NAME, output_directory=run_dir, deterministic=True,
                                n_trials=self.n_trials, seed=self.seed, use_default_config=True)
            cls = HyperparameterOptimizationFacade
            extra = {"intensifier": cls.get_intensifier(scenario)}
        else:
            scenario = Scenario(space, name=RUN_NAME, output_directory=run_dir, deterministic=True,
                                n_trials=self.n_trials, seed=self.seed, min_budget=self.min_budget,
                                max_budget=self.max_budget, use_default_config=True)
            cls = MultiFidelityFacade
            extra = {"intensifier": cls.get_intensifier(scenario, eta=self.eta)}
        # n_init counts the default, so n_init == n_trials stays within SMAC's check
        # (design + additional configurations <= n_trials).
        design = _default_first(cls.get_initial_design(scenario, n_configs=self.n_init - 1, max_ratio=1.0),
                                scenario.configspace)
        # The facade's own forest (10 trees, log_y), but single-threaded: SMAC's default
        # n_jobs=-1 makes joblib poll threads for a 10-tree forest on a few dozen points,
        # which costs seconds per model fit and competes with the trials for the driver's CPUs.
        model = RandomForest(scenario.configspace, log_y=True, n_trees=10, bootstrapping=True, ratio_features=1.0,
                             min_samples_split=2, min_samples_leaf=1, max_depth=2**20,
                             max_leaf_nodes=max(1024, 2 * self.n_trials),
                             instance_features=scenario.instance_features, seed=scenario.seed, n_jobs=1)
        maximizer = _ordered_maximizer_class()(scenario.configspace, challengers=10000, local_search_iterations=10,
                                                seed=scenario.seed)
        selector = cls.get_config_selector(scenario, retrain_after=self.retrain_after)
        with warnings.catch_warnings():
            # the design's metadata lists its additional configurations (the default) through a
            # ConfigSpace call deprecated since ConfigSpace 1.0: noise, nothing to act on
            warnings.filterwarnings("ignore", r"Please use `dict\(config\)`", DeprecationWarning)
            return cls(scenario, target_function=None, initial_design=design, model=model,
                       acquisition_maximizer=maximizer, config_selector=selector, overwrite=overwrite,
                       logging_level=False, **extra)

    def _build(self) -> None:
        self._close()
        if self.workdir is not None:
            Path(self.workdir).mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="safs_smac_", dir=self.workdir))
        self._run_dir = run_dir
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(run_dir), True)
        smac = self._new_facade(run_dir, overwrite=True)
        if self._snapshot:
            out = Path(smac.scenario.output_directory)
            self._check_snapshot(out)
            for name in ("runhistory.json", "intensifier.json", "optimization.json"):
                (out / name).write_bytes(base64.b64decode(self._snapshot[name]))
            # Same directory, same scenario: SMAC logs "Continuing from previous run." and loads
            # the runhistory, the intensifier and its stats.
            smac = self._new_facade(run_dir, overwrite=False)
        self._smac = smac
        self._attach_outstanding()
        self._snapshot = None

    def _check_snapshot(self, out: Path) -> None:
        """The snapshot must come from this very scenario, or SMAC would prompt on stdin."""
        missing = [n for n in ("runhistory.json", "intensifier.json", "optimization.json", "scenario.json")
                   if n not in self._snapshot]
        if missing:
            raise ValueError(f"smac: state snapshot lacks {', '.join(missing)}")
        saved = json.loads(base64.b64decode(self._snapshot["scenario.json"]))
        current = json.loads((out / "scenario.json").read_text())
        saved.pop("output_directory", None)
        current.pop("output_directory", None)
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(f"smac: state was saved for a different SMAC scenario (differs in: {', '.join(diff)})")

    def _attach_outstanding(self) -> None:
        """Map each outstanding token to SMAC's own running ``TrialInfo``. A token SMAC does
        not know as running (SMAC discards a snapshot with a single pending trial and nothing
        finished) is registered again, so it is neither proposed twice nor lost."""
        running = list(self._smac.runhistory.get_running_trials())
        for token, entry in self._outstanding.items():
            info = next((t for t in running if _same_trial(t, entry)), None)
            if info is None:
                info = self._rebuilt_info(entry)
                self._smac.runhistory.add_running_trial(info)
            else:
                running.remove(info)
            self._infos[token] = info

    def _running_info(self, entry: dict[str, Any]):
        info = next((t for t in self._smac.runhistory.get_running_trials() if _same_trial(t, entry)), None)
        return info if info is not None else self._rebuilt_info(entry)

    def _rebuilt_info(self, entry: dict[str, Any]):
        from ConfigSpace import Configuration
        from smac.runhistory.dataclasses import TrialInfo

        config = Configuration(self._smac.scenario.configspace, values=entry["config"])
        return TrialInfo(config=config, instance=entry["instance"], seed=entry["seed"], budget=entry["budget"])


def _same_trial(info: Any, entry: dict[str, Any]) -> bool:
    budget = None if info.budget is None else float(info.budget)
    return (budget == entry["budget"] and info.seed == entry["seed"] and info.instance == entry["instance"]
            and plain(info.config) == entry["config"])


def _default_first(design: Any, configspace: Any) -> Any:
    """``design`` with the default configuration first among its configurations.

    SMAC puts its additional configurations (the default among them) after the design's own.
    In a small discrete space the Sobol points may include the default itself; SMAC's
    de-duplication by hash then keeps the design's copy, with the design's label, or keeps
    both (a value sampled as ``np.str_`` hashes unlike the default's ``str``). So the default
    is found by value, every copy is moved to the front and labelled as the default; the
    config selector skips a copy equal to one it already proposed."""
    select = design.select_configurations
    default = configspace.get_default_configuration()

    def select_default_first() -> list:
        configs = select()
        first = [c for c in configs if c == default]
        for c in first:
            c.origin = DEFAULT_LABEL
        return first + [c for c in configs if c != default]

    design.select_configurations = select_default_first  # the config selector calls it once, at build
    return design


_MAXIMIZER: type | None = None


def _ordered_maximizer_class() -> type:
    """SMAC's default acquisition maximizer (``LocalAndSortedRandomSearch``), made independent
    of ``PYTHONHASHSEED``.

    SMAC 2.4.1's ``LocalSearch._get_init_points_from_previous_configs`` de-duplicates the
    local-search start points with ``list(set(configs))``. ``Configuration.__hash__`` hashes a
    string, so that order (and with it every model-based proposal) changes from process to
    process for the same seed. The start points are put in a fixed order (by ``repr``).
    """
    global _MAXIMIZER
    if _MAXIMIZER is None:
        from smac.acquisition.maximizer import LocalAndSortedRandomSearch
        from smac.acquisition.maximizer.local_search import LocalSearch

        class OrderedLocalSearch(LocalSearch):
            def _get_init_points_from_previous_configs(self, *args: Any, **kwargs: Any) -> list:
                return sorted(super()._get_init_points_from_previous_configs(*args, **kwargs), key=repr)

        class OrderedLocalAndSortedRandomSearch(LocalAndSortedRandomSearch):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                if type(getattr(self, "_local_search", None)) is LocalSearch:
                    self._local_search.__class__ = OrderedLocalSearch  # same object, ordered start points

        _MAXIMIZER = OrderedLocalAndSortedRandomSearch
    return _MAXIMIZER
