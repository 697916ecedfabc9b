"""The HPO backends (SMAC, Optuna) behind the ask/tell protocol of the Tune bridge, on a cheap
synthetic objective with a conditional hyperparameter (real SMAC, real Optuna, no training)."""

import json
import logging
import math
import os
import pickle
import subprocess
import sys
import zlib

import pytest
from ConfigSpace import Categorical, Configuration, ConfigurationSpace, EqualsCondition, Float

from safs.hpo.backends import backend_class, backend_options, create_backend, list_backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMUM = 1.0  # score of opt=sgd, lr=1e-2, momentum=0.9


def make_space() -> ConfigurationSpace:
    cs = ConfigurationSpace(seed=0)
    opt = Categorical("opt", ["sgd", "adam"], default="adam")
    lr = Float("lr", (1e-4, 1e-1), log=True, default=1e-3)
    momentum = Float("momentum", (0.0, 0.99), default=0.5)
    cs.add([opt, lr, momentum])
    cs.add(EqualsCondition(momentum, opt, "sgd"))
    return cs


def objective(config: dict) -> float:
    """Maximum 1.0 at sgd, lr=1e-2, momentum=0.9; adam plateaus at 0.8 (a local optimum)."""
    score = 1.0 - 0.3 * abs(math.log10(config["lr"]) + 2.0)
    return score - (0.2 if config["opt"] == "adam" else 0.3 * abs(config["momentum"] - 0.9))


def check_config(cs: ConfigurationSpace, config: dict) -> None:
    """Plain Python values, inactive hyperparameters absent, valid for the space."""
    values = {k: v for k, v in config.items() if k != "budget"}
    for v in config.values():
        assert type(v) in (str, int, float, bool), (config, type(v))
    assert ("momentum" in values) == (values["opt"] == "sgd"), config
    Configuration(cs, values=values).check_valid_configuration()


def run(opt, score=objective, cs=None) -> list[tuple[int, dict]]:
    """Ask and tell sequentially until the optimizer is done; returns what was asked."""
    asked = []
    while (out := opt.ask()) is not None:
        token, config = out
        if cs is not None:
            check_config(cs, config)
        asked.append((token, config))
        opt.tell(token, score(config))
    assert opt.done()
    return asked


def smac(cs, seed, **options):
    return create_backend("smac", cs, seed, options)


def optuna(cs, seed, **options):
    return create_backend("optuna", cs, seed, options)


# --- search quality -----------------------------------------------------------------------
# Over seeds 0-7 at 20 trials the best scores were: SMAC (hpo facade) 0.966 0.984 0.994 0.923
# 0.895 0.990 0.928 0.960, Optuna TPE 0.886 0.936 0.887 0.980 0.937 0.927 0.969 0.984, Optuna
# random sampling 0.830 0.789 0.872 0.906 0.937 0.944 0.904 0.753. The tests pin seed 7 and ask
# for 0.9 (within 0.1 of the optimum), which random sampling reaches only about half the time.
def test_smac_reaches_a_near_optimal_config_in_20_trials(capsys):
    cs = make_space()
    root_handlers = list(logging.getLogger().handlers)
    opt = smac(cs, 7, n_trials=20)
    asked = run(opt, cs=cs)
    assert [t for t, _ in asked] == list(range(20))
    config, score = opt.best()
    assert score >= OPTIMUM - 0.1 and config["opt"] == "sgd"
    assert score == max(objective(c) for _, c in asked)
    assert [r["token"] for r in opt.history] == list(range(20))
    assert len({json.dumps(c, sort_keys=True) for _, c in asked}) == 20  # nothing proposed twice
    assert opt.ask() is None
    assert capsys.readouterr().out == ""  # quiet: nothing on stdout
    assert logging.getLogger().handlers == root_handlers  # logging_level=False: root logger untouched


def test_optuna_tpe_reaches_a_near_optimal_config_in_20_trials():
    cs = make_space()
    opt = optuna(cs, 7, n_trials=20)
    asked = run(opt, cs=cs)
    assert asked[0][1] == dict(cs.get_default_configuration())  # trial 0: the space's defaults
    config, score = opt.best()
    assert score >= OPTIMUM - 0.1 and config["opt"] == "sgd"
    assert len(opt.history) == 20 and opt.ask() is None


def test_optuna_samples_every_kind_of_hyperparameter_and_condition():
    from ConfigSpace import AndConjunction, Constant, InCondition, Integer, OrConjunction
    from ConfigSpace.hyperparameters import OrdinalHyperparameter

    cs = ConfigurationSpace(seed=0)
    a = Categorical("a", ["x", "y", "z"])
    b = Float("b", (0.0, 1.0))
    width = Integer("width", (8, 256), log=True)
    level = OrdinalHyperparameter("level", ["low", "mid", "high"])
    arch = Constant("arch", "resnet20")
    c = Float("c", (1e-3, 1.0), log=True)
    cs.add([a, b, width, level, arch, c])
    cs.add(OrConjunction(EqualsCondition(b, a, "x"), InCondition(b, a, ["y"])))
    cs.add(AndConjunction(InCondition(c, a, ["x", "z"]), EqualsCondition(c, level, "high")))
    opt = optuna(cs, 0, n_trials=30, sampler="RandomSampler")
    asked = run(opt, score=lambda cfg: 0.5)
    for _, config in asked:
        Configuration(cs, values=config).check_valid_configuration()
        assert config["arch"] == "resnet20" and type(config["width"]) is int
        assert ("b" in config) == (config["a"] in ("x", "y"))
        assert ("c" in config) == (config["a"] in ("x", "z") and config["level"] == "high")
    assert {cfg["a"] for _, cfg in asked} == {"x", "y", "z"}
    assert any("c" in cfg for _, cfg in asked)


def test_optuna_rejects_samples_that_violate_forbidden_clauses():
    from ConfigSpace import ForbiddenAndConjunction, ForbiddenEqualsClause, ForbiddenInClause

    cs = ConfigurationSpace(seed=0)
    a, b = Categorical("a", ["x", "y", "z"], default="x"), Categorical("b", ["u", "v"], default="u")
    cs.add([a, b])
    cs.add(ForbiddenAndConjunction(ForbiddenEqualsClause(a, "y"), ForbiddenEqualsClause(b, "v")))
    cs.add(ForbiddenInClause(a, ["z"]))
    opt = optuna(cs, 0, n_trials=12, sampler="RandomSampler")
    asked = run(opt, score=lambda cfg: 0.5)
    assert len(asked) == 12 and {(c["a"], c["b"]) for _, c in asked} <= {("x", "u"), ("x", "v"), ("y", "u")}
    fresh = optuna(cs, 0, n_trials=12, sampler="RandomSampler")  # the rejected samples travel in the state
    fresh.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    assert fresh.done() and len(fresh.state_dict()["finished"]) > 12


# --- failures -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_failed_trials_are_recorded_and_the_search_goes_on(backend):
    """None / NaN / inf / a bool are failures. For SMAC they are told before its random forest is first
    fitted: a failure told with cost inf would make that fit raise (NaN targets)."""
    cs = make_space()
    opt = create_backend(backend, cs, 1, {"n_trials": 8, **({"n_init": 3} if backend == "smac" else {})})
    failures = {0: None, 1: math.nan, 2: math.inf, 3: True}
    asked = run(opt, score=lambda cfg: failures.get(len(opt.history), objective(cfg)))
    assert len(asked) == 8 and opt.done()
    assert [r["score"] for r in opt.history[:4]] == [None, None, None, None]
    assert all(r["score"] is not None for r in opt.history[4:])
    config, score = opt.best()
    assert score == max(r["score"] for r in opt.history[4:])
    assert config == next(r["config"] for r in opt.history if r["score"] == score)


@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_best_is_none_until_a_trial_succeeds_and_tells_are_idempotent(backend):
    opt = create_backend(backend, make_space(), 0, {"n_trials": 2})
    assert opt.best() is None and opt.max_parallel() is None
    t0, c0 = opt.ask()
    t1, c1 = opt.ask()  # asked before any tell, as under Ray concurrency
    assert (t0, t1) == (0, 1) and c0 != c1
    assert opt.ask() is None and not opt.done()
    opt.tell(t1, None)
    assert opt.best() is None
    opt.tell(t1, 0.9)  # already told: ignored
    opt.tell(99, 0.9)  # unknown: ignored
    opt.tell("junk", 0.9)
    opt.tell(t0, 0.25)
    assert opt.done() and opt.best() == (c0, 0.25)
    assert [(r["token"], r["score"]) for r in opt.history] == [(1, None), (0, 0.25)]


# --- resume -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_state_round_trip_mid_run_with_an_outstanding_trial(backend):
    cs = make_space()
    options = {"n_trials": 10, **({"n_init": 3} if backend == "smac" else {})}
    opt = create_backend(backend, cs, 3, options)
    asked = {}
    for _ in range(6):
        token, config = opt.ask()
        asked[token] = config
    for token, config in asked.items():
        if token != 4:  # token 4 stays outstanding across the restore
            opt.tell(token, None if token == 2 else objective(config))
    state = json.loads(json.dumps(state_before := opt.state_dict(), allow_nan=False))
    assert state == state_before

    fresh = create_backend(backend, cs, 3, options)
    fresh.load_state_dict(state)
    assert not fresh.done() and [r["token"] for r in fresh.history] == [0, 1, 2, 3, 5]
    fresh.tell(4, objective(asked[4]))  # the outstanding token still lands
    fresh.tell(4, 0.0)  # and only once
    fresh.tell(1, 0.0)  # told before the restore: ignored
    told_before = {json.dumps(asked[t], sort_keys=True) for t in asked}
    after = run(fresh, cs=cs)
    assert [t for t, _ in after] == [6, 7, 8, 9]  # asks continue up to n_trials in all
    assert fresh.ask() is None and fresh.done()
    assert sorted(r["token"] for r in fresh.history) == list(range(10))
    assert fresh.history[5]["token"] == 4 and fresh.history[5]["score"] == objective(asked[4])
    if backend == "smac":  # SMAC never proposes an evaluated configuration again
        assert not told_before & {json.dumps(c, sort_keys=True) for _, c in after}
        rh = fresh._smac.runhistory
        assert (rh.submitted, rh.finished, rh.running) == (10, 10, 0)
    # and the finished state restores too
    again = create_backend(backend, cs, 3, options)
    again.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert again.done() and again.ask() is None and again.best() == fresh.best()


def test_smac_restores_a_snapshot_with_one_pending_trial_and_nothing_told():
    """SMAC itself discards such a run when it reloads it ("not successful"); the pending trial
    is registered again so it is neither lost nor proposed twice."""
    cs = make_space()
    opt = smac(cs, 0, n_trials=3, n_init=2)
    token, config = opt.ask()
    fresh = smac(cs, 0, n_trials=3, n_init=2)
    fresh.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    later = [fresh.ask(), fresh.ask()]
    assert [t for t, _ in later] == [1, 2] and fresh.ask() is None
    assert config not in [c for _, c in later]
    for t, c in [(token, config), *later]:
        fresh.tell(t, objective(c))
    assert fresh.done()
    rh = fresh._smac.runhistory
    assert (rh.submitted, rh.finished, rh.running) == (3, 3, 0)
    json.dumps(fresh.state_dict())  # SMAC's own save checks its running-trial bookkeeping


@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_state_is_refused_by_a_differently_configured_optimizer(backend):
    cs = make_space()
    opt = create_backend(backend, cs, 0, {"n_trials": 4})
    opt.tell(opt.ask()[0], 0.5)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="n_trials"):
        create_backend(backend, cs, 0, {"n_trials": 5}).load_state_dict(state)
    other = "optuna" if backend == "smac" else "smac"
    with pytest.raises(ValueError, match="HPO backend"):
        create_backend(other, cs, 0, {"n_trials": 4}).load_state_dict(state)
    if backend == "smac":  # a snapshot of another SMAC scenario is refused before SMAC reads it
        # (SMAC itself would call input() and hang, or raise EOFError under Ray)
        import base64

        scenario = json.loads(base64.b64decode(state["smac_files"]["scenario.json"]))
        scenario["n_trials"] = 5
        state["smac_files"]["scenario.json"] = base64.b64encode(json.dumps(scenario).encode()).decode()
        with pytest.raises(ValueError, match=r"different SMAC scenario \(differs in: n_trials\)"):
            create_backend(backend, cs, 0, {"n_trials": 4}).load_state_dict(state)


def test_smac_refuses_a_snapshot_of_a_scenario_without_the_default_configuration():
    """A snapshot from before the default was the first trial is refused, not resumed as a
    search that would ask the default in the middle."""
    import base64

    cs = make_space()
    opt = smac(cs, 0, n_trials=4)
    opt.tell(opt.ask()[0], 0.5)
    state = opt.state_dict()
    scenario = json.loads(base64.b64decode(state["smac_files"]["scenario.json"]))
    assert scenario["use_default_config"] is True
    scenario["use_default_config"] = False
    state["smac_files"]["scenario.json"] = base64.b64encode(json.dumps(scenario).encode()).decode()
    with pytest.raises(ValueError, match=r"differs in: use_default_config"):
        smac(cs, 0, n_trials=4).load_state_dict(state)


@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_pickling_is_cheap_and_a_pickled_copy_continues(backend):
    cs = make_space()
    opt = create_backend(backend, cs, 0, {"n_trials": 4})
    assert len(pickle.dumps(opt)) < 50_000  # nothing built yet: what Tune writes into tuner.pkl
    first = opt.ask()
    copy = pickle.loads(pickle.dumps(opt))  # mid-run: the live facade/study travels as its state
    assert copy.origin(first[0]) == "default"  # outstanding, its origin travels too
    copy.tell(first[0], objective(first[1]))
    asked = run(copy)
    assert [t for t, _ in asked] == [1, 2, 3] and len(copy.history) == 4


# --- seeding ------------------------------------------------------------------------------
def first_configs(opt, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        token, config = opt.ask()
        opt.tell(token, objective(config))
        out.append(config)
    return out


def test_smac_same_seed_same_configs():
    cs = make_space()
    a = first_configs(smac(cs, 5, n_trials=6, n_init=3), 4)  # the default, 2 from the initial design, 1 modelled
    assert a == first_configs(smac(cs, 5, n_trials=6, n_init=3), 4)
    assert a[:3] != first_configs(smac(cs, 6, n_trials=6, n_init=3), 3)


@pytest.mark.parametrize("sampler", ["TPESampler", "RandomSampler"])
def test_optuna_same_seed_same_configs(sampler):
    cs = make_space()
    a = first_configs(optuna(cs, 5, n_trials=14, sampler=sampler), 14)  # TPE: 10 startup, then 4 modelled
    assert a == first_configs(optuna(cs, 5, n_trials=14, sampler=sampler), 14)
    assert a[1:] != first_configs(optuna(cs, 6, n_trials=14, sampler=sampler), 14)[1:]  # [0]: defaults


@pytest.mark.slow
def test_smac_proposals_do_not_depend_on_the_python_hash_seed():
    """SMAC 2.4.1 orders its local-search start points through a set of Configurations, whose
    hash is a string hash; the backend fixes that order, so a seed means the same search in
    every process."""
    code = ("import json, sys; sys.path.insert(0, 'tests'); from test_hpo_backends import *; "
            "print(json.dumps(first_configs(smac(make_space(), 2, n_trials=8, n_init=2), 8)))")
    outs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout for h in (1, 2)]
    assert outs[0] == outs[1] and len(json.loads(outs[0])) == 8


# --- multi-fidelity -----------------------------------------------------------------------
def test_smac_multi_fidelity_asks_budgets_between_min_and_max():
    cs = make_space()
    opt = smac(cs, 0, n_trials=20, facade="multi_fidelity", min_budget=1, max_budget=9, retrain_after=4)
    asked = []
    pending = []
    while not opt.done():  # two trials in flight, as with two Ray workers
        out = opt.ask()
        if out is not None:
            check_config(cs, out[1])
            asked.append(out)
            pending.append(out)
        if out is None or len(pending) == 2:
            token, config = pending.pop(0)
            opt.tell(token, objective(config) - 0.02 * (9 - config["budget"]))
    assert len(asked) == 20 and [t for t, _ in asked] == list(range(20))
    budgets = [c["budget"] for _, c in asked]
    assert all(type(b) is float and 1 <= b <= 9 for b in budgets)
    assert set(budgets) <= {1.0, 3.0, 9.0} and 9.0 in budgets  # Hyperband, eta=3
    config, score = opt.best()
    top = [r for r in opt.history if r["budget"] == 9.0]
    assert config["budget"] == 9.0 and score == max(r["score"] for r in top)


# --- the first trial: the stage's own configuration; where each one came from ---------------
PAPER_KEYS = ["lenet5/mnist", "resnet18/cifar10"]
MULTI_FIDELITY = {"facade": "multi_fidelity", "min_budget": 1, "max_budget": 9}
BACKEND_CASES = [("smac", {}), ("smac", MULTI_FIDELITY), ("optuna", {})]
BACKEND_IDS = ["smac", "smac-multi_fidelity", "optuna"]


def stage_space(key: str) -> ConfigurationSpace:
    """The built-in space with a paper model's training settings as its defaults, as an hpo
    stage builds it."""
    from safs.hpo.space import load_space, paper_settings, with_defaults

    return with_defaults(load_space("safs"), paper_settings(key))


def without_budget(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "budget"}


def default_of(cs: ConfigurationSpace) -> dict:
    return {k: v.item() if hasattr(v, "item") else v for k, v in dict(cs.get_default_configuration()).items()}


def stage_score(config: dict) -> float:
    """A repeatable score in [0.5, 0.6) for any configuration of the built-in space."""
    return 0.5 + zlib.crc32(json.dumps(config, sort_keys=True).encode()) % 100 / 1000


def test_the_paper_defaults_make_different_default_configurations():
    """So a first trial equal to each one's default is the stage's own, not a fixed point."""
    lenet, resnet = (default_of(stage_space(k)) for k in PAPER_KEYS)
    assert lenet["optim_name"] == "adam" and lenet["lr_Adam"] == 1e-3
    assert resnet["optim_name"] == "sgd" and resnet["lr_SGD"] == 1e-2 and resnet["lr_scheduler"] == "plateau"


@pytest.mark.parametrize("key", PAPER_KEYS)
@pytest.mark.parametrize("backend,options", BACKEND_CASES, ids=BACKEND_IDS)
def test_the_first_trial_is_the_stages_own_configuration(backend, options, key):
    cs = stage_space(key)
    default = default_of(cs)
    for seed in (0, 1, 2):
        opt = create_backend(backend, cs, seed, {"n_trials": 8, **options})
        token, config = opt.ask()
        assert token == 0 and without_budget(config) == default, (seed, config)
        assert opt.origin(0) == "default"
        if "budget" in config:  # Hyperband's first bracket starts at the lowest budget
            assert config["budget"] == 1.0
        opt.tell(0, 0.5)
        later = [opt.ask() for _ in range(3)]
        assert all(without_budget(c) != default for _, c in later)
        assert all(opt.origin(t) != "default" for t, _ in later)
        assert opt.origin(0) == "default"  # still known once told


def test_smac_labels_the_default_then_its_initial_design_then_model_and_random_proposals():
    cs = make_space()
    opt = smac(cs, 1, n_trials=20, n_init=5)
    asked = run(opt, cs=cs)
    origins = [opt.origin(t) for t, _ in asked]
    assert origins[:5] == ["default"] + ["initial_design"] * 4  # n_init counts the default
    assert set(origins[5:]) == {"model", "random"}  # SMAC interleaves random configurations
    assert asked[0][1] == default_of(cs)
    assert [r["origin"] for r in opt.history] == origins


def test_smac_n_init_may_be_every_trial_and_one_means_only_the_default():
    cs = make_space()
    opt = smac(cs, 0, n_trials=4, n_init=4)
    assert [opt.origin(t) for t, _ in run(opt, cs=cs)] == ["default"] + ["initial_design"] * 3
    opt = smac(cs, 0, n_trials=4, n_init=1)
    origins = [opt.origin(t) for t, _ in run(opt, cs=cs)]
    assert origins[0] == "default" and "initial_design" not in origins


def test_smac_puts_the_default_first_when_its_initial_design_also_drew_it():
    """In a 6-point space the Sobol design of seeds 1 and 2 contains the default itself."""
    from ConfigSpace import Categorical

    cs = ConfigurationSpace(seed=0)
    cs.add([Categorical("a", ["x", "y", "z"], default="y"), Categorical("b", ["u", "v"], default="v")])
    for seed in (1, 2):
        opt = smac(cs, seed, n_trials=6, n_init=6)
        asked = run(opt, stage_score)
        assert asked[0][1] == {"a": "y", "b": "v"}
        assert [opt.origin(t) for t, _ in asked].count("default") == 1 and opt.origin(0) == "default"
        assert len({json.dumps(c, sort_keys=True) for _, c in asked}) == 6  # nothing asked twice


def test_smac_multi_fidelity_keeps_a_promoted_configurations_origin():
    """SMAC relabels an unlabelled configuration "Custom" when it is told; a configuration
    promoted to a higher budget keeps the origin it was first asked with."""
    cs = make_space()
    default = default_of(cs)
    opt = smac(cs, 0, n_trials=20, n_init=5, **MULTI_FIDELITY)

    def score(config):  # the default is the best: Hyperband promotes it to every budget
        return 1.0 if without_budget(config) == default else 0.5 * objective(config)

    asked = run(opt, score, cs=cs)
    first_origin: dict[str, str] = {}
    for token, config in asked:
        key = json.dumps(without_budget(config), sort_keys=True)
        first_origin.setdefault(key, opt.origin(token))
        assert opt.origin(token) == first_origin[key], (token, config)
        assert (opt.origin(token) == "default") == (without_budget(config) == default)
    assert [c["budget"] for t, c in asked if opt.origin(t) == "default"] == [1.0, 3.0, 9.0]
    assert {"initial_design", "random", "model"} <= set(first_origin.values())


def test_optuna_labels_the_default_then_its_sampler():
    cs = make_space()
    opt = optuna(cs, 0, n_trials=6)
    asked = run(opt, cs=cs)
    assert [opt.origin(t) for t, _ in asked] == ["default"] + ["sampler"] * 5
    assert opt.origin(99) is None


@pytest.mark.parametrize("backend,options", BACKEND_CASES, ids=BACKEND_IDS)
def test_a_state_saved_before_the_first_ask_still_starts_with_the_default(backend, options):
    cs = stage_space("resnet18/cifar10")
    saved = json.loads(json.dumps(create_backend(backend, cs, 0, {"n_trials": 6, **options}).state_dict()))
    fresh = create_backend(backend, cs, 0, {"n_trials": 6, **options})
    fresh.load_state_dict(saved)
    token, config = fresh.ask()
    assert token == 0 and without_budget(config) == default_of(cs) and fresh.origin(0) == "default"


@pytest.mark.parametrize("backend,options", BACKEND_CASES, ids=BACKEND_IDS)
def test_origins_survive_a_resume_and_the_default_is_not_proposed_again(backend, options):
    cs = stage_space("lenet5/mnist")
    settings = {"n_trials": 10, **options, **({"n_init": 3} if backend == "smac" else {})}
    opt = create_backend(backend, cs, 4, settings)
    asked = [opt.ask() for _ in range(4)]
    for token, config in asked[1:]:  # the default (token 0) stays outstanding across the restore
        opt.tell(token, stage_score(config))
    before = {t: opt.origin(t) for t, _ in asked}
    assert before[0] == "default"
    fresh = create_backend(backend, cs, 4, settings)
    fresh.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    assert {t: fresh.origin(t) for t, _ in asked} == before
    fresh.tell(0, 0.9)
    after = run(fresh, stage_score)
    assert [t for t, _ in after] == list(range(4, 10))
    default = default_of(cs)
    for token, config in after:  # the default again only as a promotion to a higher budget
        is_default = without_budget(config) == default
        assert (fresh.origin(token) == "default") == is_default
        assert not is_default or config["budget"] > asked[0][1]["budget"]
    if backend == "smac" and not options:
        assert [fresh.origin(t) for t, _ in asked + after][:3] == ["default", "initial_design", "initial_design"]
        assert {fresh.origin(t) for t, _ in after} <= {"model", "random"}
    if backend == "optuna":
        assert {fresh.origin(t) for t, _ in after} == {"sampler"}
    assert [r["origin"] for r in fresh.history] == [fresh.origin(r["token"]) for r in fresh.history]


# --- registry -----------------------------------------------------------------------------
def test_registry_lists_backends_and_their_options():
    assert list_backends() == ["optuna", "smac"]
    smac_opts = backend_options("smac")
    assert list(smac_opts)[0] == "n_trials" and smac_opts["n_trials"] == 20
    assert {"facade", "n_init", "min_budget", "max_budget", "workdir"} <= set(smac_opts)
    assert smac_opts["facade"] == "hpo"
    optuna_opts = backend_options("optuna")
    assert optuna_opts["sampler"] == "TPESampler" and "sampler_options" in optuna_opts
    assert backend_class("smac").__name__ == "SMACOptimizer"


def test_registry_errors_name_the_bad_input():
    cs = make_space()
    with pytest.raises(ValueError, match=r"^unknown HPO backend 'x'; accepted: optuna, smac$"):
        create_backend("x", cs, 0, {})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'trials' for HPO backend 'smac'; accepted: n_trials, "):
        create_backend("smac", cs, 0, {"trials": 3})
    bad = [
        ("smac", {"facade": "bohb"}, "unknown facade 'bohb'; accepted: hpo, multi_fidelity"),
        ("smac", {"facade": "multi_fidelity"}, "needs min_budget and max_budget"),
        ("smac", {"facade": "multi_fidelity", "min_budget": 5, "max_budget": 3}, "0 < min_budget < max_budget"),
        ("smac", {"max_budget": 9}, "only to facade 'multi_fidelity'"),
        ("smac", {"n_trials": 0}, "n_trials must be"),
        ("smac", {"n_trials": 4, "n_init": 5}, r"n_init must be an integer in \[1, n_trials=4\]"),
        ("optuna", {"sampler": "Nope"}, "unknown sampler 'Nope'; accepted: .*TPESampler"),
        ("optuna", {"sampler": "TPESampler", "sampler_options": {"bogus": 1}}, "cannot build TPESampler"),
        ("optuna", {"sampler": "GridSampler"}, "cannot build GridSampler"),
    ]
    for name, options, message in bad:
        with pytest.raises(ValueError, match=message):
            create_backend(name, cs, 0, options)


def test_importing_the_registry_loads_neither_smac_nor_optuna():
    code = ("import sys; import safs.hpo.backends as h; h.backend_options('smac'); "
            "h.backend_options('optuna'); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('smac', 'optuna', 'ray', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- through the Tune bridge (driven by hand, no Ray run) -----------------------------------
@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_backends_drive_the_tune_bridge(backend):
    from ray.tune.search import Searcher

    from safs.tune.searcher import AskTellSearcher

    cs = make_space()
    searcher = AskTellSearcher(create_backend(backend, cs, 0, {"n_trials": 5}), max_concurrent=2)
    assert searcher.set_search_properties("score", "max", {})
    live, n, restored = [], 0, False
    while True:
        out = searcher.suggest(f"t{n}")
        if isinstance(out, dict):
            candidate = out["candidate"]
            assert set(candidate) == {"token", "config", "origin"}
            assert (candidate["origin"] == "default") == (candidate["token"] == 0)
            config = candidate["config"]
            check_config(cs, config)
            live.append((f"t{n}", config))
            n += 1
            continue
        if out == Searcher.FINISHED:
            break
        trial_id, config = live.pop(0)  # None: wait for a running trial
        searcher.on_trial_complete(trial_id, {"score": objective(config)})
        if n == 3 and not restored:  # save and restore mid-run, as Tune does, with a trial still live
            restored = True
            state = json.loads(json.dumps(searcher.get_state()))
            searcher = AskTellSearcher(create_backend(backend, cs, 0, {"n_trials": 5}))
            searcher.set_state(state)
    assert n == 5 and searcher.optimizer.done()
    assert searcher.get_state()["best"]["config"] == searcher.optimizer.best()[0]
    assert sorted(r["token"] for r in searcher.optimizer.history) == list(range(5))
