"""The HPO backends (SMAC, Optuna) behind the ask/tell protocol of the Tune bridge, on a cheap
synthetic objective with a conditional hyperparameter (real SMAC, real Optuna, no training)."""

import json
import logging
import math
import os
import pickle
import subprocess
import sys

import pytest
from ConfigSpace import Categorical, Configuration, ConfigurationSpace, EqualsCondition, Float

from safs.search.hpo_backends import backend_class, backend_options, create_backend, list_backends

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
    """None / NaN / inf are failures. For SMAC they are told before its random forest is first
    fitted: a failure told with cost inf would make that fit raise (NaN targets)."""
    cs = make_space()
    opt = create_backend(backend, cs, 1, {"n_trials": 8, **({"n_init": 3} if backend == "smac" else {})})
    failures = {0: None, 1: math.nan, 2: math.inf}
    asked = run(opt, score=lambda cfg: failures.get(len(opt.history), objective(cfg)))
    assert len(asked) == 8 and opt.done()
    assert [r["score"] for r in opt.history[:3]] == [None, None, None]
    assert all(r["score"] is not None for r in opt.history[3:])
    config, score = opt.best()
    assert score == max(r["score"] for r in opt.history[3:])
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


@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_pickling_is_cheap_and_a_pickled_copy_continues(backend):
    cs = make_space()
    opt = create_backend(backend, cs, 0, {"n_trials": 4})
    assert len(pickle.dumps(opt)) < 50_000  # nothing built yet: what Tune writes into tuner.pkl
    first = opt.ask()
    copy = pickle.loads(pickle.dumps(opt))  # mid-run: the live facade/study travels as its state
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
    a = first_configs(smac(cs, 5, n_trials=6, n_init=3), 4)  # 3 from the initial design, 1 from the model
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
    code = ("import sys; import safs.search.hpo_backends as h; h.backend_options('smac'); "
            "h.backend_options('optuna'); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('smac', 'optuna', 'ray', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- through the Tune bridge (driven by hand, no Ray run) -----------------------------------
@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_backends_drive_the_tune_bridge(backend):
    from ray.tune.search import Searcher

    from safs.search.bridge import AskTellSearcher

    cs = make_space()
    searcher = AskTellSearcher(create_backend(backend, cs, 0, {"n_trials": 5}), max_concurrent=2)
    assert searcher.set_search_properties("score", "max", {})
    live, n, restored = [], 0, False
    while True:
        out = searcher.suggest(f"t{n}")
        if isinstance(out, dict):
            candidate = out["candidate"]
            assert set(candidate) == {"token", "config"}
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
