"""The Ray Tune searcher bridge (``safs.tune.searcher.AskTellSearcher``): driven by hand like
Tune drives it (suggest / on_trial_complete / save / restore), then one real, tiny Tune run."""

import json
import math
import os
import random

import pytest

from safs.tune import experiment  # noqa: F401  (sets Tune's environment defaults before Ray is used)
from safs.search import GeneticAlgorithm, GenomeSpace, RandomSearch, create_optimizer
from safs.search.base import FAILED
from safs.tune.searcher import STATE_VERSION, AskTellSearcher
from ray.tune.search import Searcher

FINISHED = Searcher.FINISHED


def make_space(n_slots: int = 3, n_ops: int = 4) -> GenomeSpace:
    return GenomeSpace(tuple(f"s{i}" for i in range(n_slots)), tuple(f"op{j}" for j in range(n_ops)), "relu")


def table_score(space: GenomeSpace, seed: int = 7):
    rng = random.Random(seed)
    table = {s: {o: rng.random() for o in space.choices} for s in space.slots}
    return lambda genome: sum(table[s][genome[s]] for s in space.slots) / len(space.slots)


def searcher_for(optimizer, max_concurrent: int, metric: str = "score", mode: str = "max") -> AskTellSearcher:
    s = AskTellSearcher(optimizer, max_concurrent=max_concurrent)
    assert s.set_search_properties(metric, mode, {})
    return s


class Driver:
    """Plays Tune: fresh trial ids, suggest, complete. Records every suggestion."""

    def __init__(self, searcher: AskTellSearcher, prefix: str = "t"):
        self.searcher, self.prefix, self.n = searcher, prefix, 0
        self.suggested: list[tuple[str, int, dict]] = []  # (trial id, token, genome)

    def suggest(self):
        trial_id = f"{self.prefix}{self.n:03d}"
        out = self.searcher.suggest(trial_id)
        if isinstance(out, dict):
            self.n += 1
            cand = out["candidate"]
            assert set(out) == {"candidate"} and set(cand) == {"token", "genome"}
            self.suggested.append((trial_id, cand["token"], cand["genome"]))
            return trial_id, cand
        return out

    def fill(self):
        """Suggest until the searcher says wait (None) or FINISHED; return the new trials and that answer."""
        new = []
        while True:
            out = self.suggest()
            if not isinstance(out, tuple):
                return new, out
            new.append(out)


def run_to_end(driver: Driver, score_fn, complete_order=min, limit: int = 1000):
    """Tune's loop: fill the free slots, complete one live trial, repeat until FINISHED."""
    s = driver.searcher
    for _ in range(limit):
        new, answer = driver.fill()
        genomes = {tid: genome for tid, _, genome in driver.suggested}
        assert len(s.live) <= s.max_concurrent
        if answer == FINISHED:
            assert not s.live and s.optimizer.done()
            return
        assert answer is None
        assert s.live, "suggest returned None with no trial live: Tune would wait forever"
        tid = complete_order(s.live)
        s.on_trial_complete(tid, {"score": score_fn(genomes[tid])})
    raise AssertionError("the search did not finish")


# --------------------------------------------------------------------------- suggest


def test_random_search_suggests_distinct_genomes_then_finishes():
    space = make_space()
    s = searcher_for(RandomSearch(space, 0, samples=5), max_concurrent=10)
    d = Driver(s)
    new, answer = d.fill()
    assert answer is None  # all 5 asked, all live: wait, do not finish
    assert [c["token"] for _, c in new] == [0, 1, 2, 3, 4]
    assert len({tuple(c["genome"][k] for k in space.slots) for _, c in new}) == 5
    assert all(set(c["genome"]) == set(space.slots) for _, c in new)
    assert s.live == {tid: c["token"] for tid, c in new}
    for i, (tid, _) in enumerate(new[:-1]):
        s.on_trial_complete(tid, {"score": i / 10})
        assert s.suggest(f"x{i}") is None  # still one live: ask again later
        assert not s.finished
    s.on_trial_complete(new[-1][0], {"score": 0.9})
    assert s.suggest("last") == FINISHED
    assert s.suggest("after") == FINISHED  # stays finished
    assert s.optimizer.done() and s.live == {}
    assert s.optimizer.best()[1] == 0.9
    assert {v["token"] for v in s.told.values()} == {0, 1, 2, 3, 4}


def test_max_concurrent_is_respected_and_a_refused_suggest_asks_nothing():
    space = make_space()
    s = searcher_for(RandomSearch(space, 0, samples=6), max_concurrent=2)
    d = Driver(s)
    new, answer = d.fill()
    assert answer is None and len(new) == 2 and len(s.live) == 2
    assert s.suggest("refused") is None
    assert s.optimizer.outstanding().keys() == {0, 1}  # the refused suggest did not consume a token
    s.on_trial_complete(new[0][0], {"score": 0.5})
    more, answer = d.fill()
    assert [c["token"] for _, c in more] == [2] and answer is None
    # The whole search never exceeds two live trials and trains every sample once.
    run_to_end(d, lambda g: 0.1)
    assert sorted(t for _, t, _ in d.suggested) == list(range(6))
    assert s.set_max_concurrency(3) and s.max_concurrent == 3
    assert s.set_max_concurrency(0) and s.max_concurrent == 1


def test_ga_waits_for_its_generation_and_never_waits_with_nothing_live():
    space = make_space()
    score = table_score(space)
    ga = GeneticAlgorithm(space, 3, population=4, generations=3)
    s = searcher_for(ga, max_concurrent=8)
    d = Driver(s)
    gen0, answer = d.fill()
    assert len(gen0) == 4 and answer is None  # a whole generation, then wait
    for tid, cand in gen0[:-1]:
        s.on_trial_complete(tid, {"score": score(cand["genome"])})
        assert s.suggest("wait") is None and ga.generation == 0  # the generation is still running
    s.on_trial_complete(gen0[-1][0], {"score": score(gen0[-1][1]["genome"])})
    assert ga.generation == 1
    gen1, answer = d.fill()
    assert 1 <= len(gen1) <= 3  # the elite comes from the memo, not from a new trial
    assert [c["token"] for _, c in gen1] == list(range(4, 4 + len(gen1)))
    run_to_end(d, score)
    assert ga.generation == 3 and ga.done()
    trained = [h for h in ga.history if not h["cached"]]
    assert len(trained) == len(d.suggested) == len({tuple(g.values()) for _, _, g in d.suggested})


@pytest.mark.parametrize("max_concurrent", [1, 2, 5])
def test_ga_with_any_concurrency_gives_the_same_candidates(max_concurrent):
    """A GA's generations do not depend on the order or the batching of completions."""
    space = make_space()
    score = table_score(space)

    def candidates(mc, order):
        d = Driver(searcher_for(GeneticAlgorithm(space, 5, population=4, generations=3), mc))
        run_to_end(d, score, complete_order=order)
        return sorted((t, tuple(g.values())) for _, t, g in d.suggested)

    reference = candidates(8, min)
    assert candidates(max_concurrent, max) == reference
    assert candidates(max_concurrent, min) == reference


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("complete", [
    pytest.param(dict(result={"score": 0.99}, error=True), id="error"),
    pytest.param(dict(result=None), id="no-result"),
    pytest.param(dict(result={"epoch": 3, "val_acc": 0.99}), id="no-score"),
    pytest.param(dict(result={"score": float("nan")}), id="nan"),
    pytest.param(dict(result={"score": float("inf")}), id="inf"),
    pytest.param(dict(result={"score": "high"}), id="not-a-number"),
    pytest.param(dict(result={"score": True}), id="bool"),
    pytest.param(dict(result={"score": 0.99, "failed": "training loss is nan"}), id="failed"),
])
def test_a_failed_trial_is_told_as_a_failure_and_the_search_goes_on(complete):
    space = make_space()
    s = searcher_for(RandomSearch(space, 0, samples=4), max_concurrent=1)
    d = Driver(s)
    t0, c0 = d.suggest()
    s.on_trial_complete(t0, {"score": 0.25})
    t1, c1 = d.suggest()
    s.on_trial_complete(t1, **complete)
    assert s.told[t1] == {"token": c1["token"], "score": None}
    [entry] = [h for h in s.optimizer.history if h["token"] == c1["token"]]
    assert entry["score"] is None and not entry["cached"]  # -inf, stored as None
    assert s.optimizer._memo[tuple(c1["genome"].values())] == FAILED
    assert s.optimizer.best() == (c0["genome"], 0.25)  # the failure is never the best
    # The search continues: the remaining samples are suggested and can win.
    t2, c2 = d.suggest()
    assert c2["token"] == 2
    s.on_trial_complete(t2, {"score": 0.5})
    assert s.optimizer.best() == (c2["genome"], 0.5)
    run_to_end(d, lambda g: 0.0)
    assert len(d.suggested) == 4


def test_all_failures_leave_no_best_and_still_finish():
    s = searcher_for(RandomSearch(make_space(), 1, samples=3), max_concurrent=2)
    d = Driver(s)
    for _ in range(10):
        new, answer = d.fill()
        if answer == FINISHED:
            break
        s.on_trial_complete(min(s.live), None, error=True)
    assert answer == FINISHED and len(d.suggested) == 3
    assert s.optimizer.best() is None
    assert all(h["score"] is None for h in s.optimizer.history)
    state = s.get_state()
    assert state["best"] is None and state["done"] and state["finished"]
    json.dumps(state, allow_nan=False)


def test_metric_and_mode_come_from_tune():
    space = make_space()
    s = searcher_for(RandomSearch(space, 0, samples=3), max_concurrent=3, metric="loss", mode="min")
    d = Driver(s)
    new, _ = d.fill()
    s.on_trial_complete(new[0][0], {"loss": 0.5, "score": 0.0})
    s.on_trial_complete(new[1][0], {"loss": 0.2, "score": 0.0})
    s.on_trial_complete(new[2][0], {"score": 0.1})  # no "loss": a failure, whatever "score" says
    assert s.optimizer.best() == (new[1][1]["genome"], -0.2)  # minimised: told negated
    assert s.told[new[2][0]]["score"] is None
    assert s.told[new[1][0]]["score"] == 0.2  # the told map keeps the metric as reported


def test_duplicate_and_unknown_completions_are_ignored():
    space = make_space()
    s = searcher_for(RandomSearch(space, 0, samples=3), max_concurrent=3)
    d = Driver(s)
    new, _ = d.fill()
    tid, cand = new[0]
    s.on_trial_complete(tid, {"score": 0.4})
    before = json.dumps(s.get_state())
    s.on_trial_complete(tid, {"score": 0.9})  # Tune may repeat a completion after a restore
    s.on_trial_complete(tid, None, error=True)
    s.on_trial_complete("never-suggested", {"score": 1.0})
    assert json.dumps(s.get_state()) == before
    assert [h["score"] for h in s.optimizer.history] == [0.4]
    assert s.optimizer.best() == (cand["genome"], 0.4)
    assert len(s.live) == 2


# --------------------------------------------------------------------------- save / restore


@pytest.mark.parametrize("name, options, max_concurrent", [
    ("ga", {"population": 4, "generations": 3}, 3),
    ("random", {"samples": 9}, 2),
    ("lahc", {"neighbours": 2, "steps_minimum": 3, "max_steps": 6}, 2),
    ("sa", {}, 1),
])
def test_save_restore_continues_exactly(tmp_path, name, options, max_concurrent):
    space = make_space()
    score = table_score(space)
    a = searcher_for(create_optimizer(name, space, 11, options), max_concurrent)
    da = Driver(a)
    new, _ = da.fill()
    first_live = dict(a.live)
    assert first_live
    # Complete some trials (not all), so the checkpoint has told and live trials.
    for tid, cand in new[:-1]:
        a.on_trial_complete(tid, {"score": score(cand["genome"])})
    more, _ = da.fill()
    genomes = {tid: c["genome"] for tid, c in new + more}
    path = tmp_path / "searcher-state-x.pkl"
    a.save(str(path))
    state = json.loads(path.read_text())  # plain JSON, nothing to unpickle
    assert state["live"] == a.live and state["version"] == STATE_VERSION
    assert not list(tmp_path.glob("*.tmp"))

    # A new process: same algorithm, space and seed, no search properties from Tune yet.
    b = AskTellSearcher(create_optimizer(name, space, 11, options), max_concurrent=1)
    b.restore(str(path))
    assert b.live == a.live and b.told == a.told and b.max_concurrent == a.max_concurrent
    assert (b.metric, b.mode) == ("score", "max")
    assert b.optimizer.state_dict() == a.optimizer.state_dict()
    assert b.live  # trials that were running at the save

    # A trial that was live before the save completes on the restored searcher, and from
    # then on both searchers make the same suggestions given the same completions.
    live_at_save = dict(b.live)
    tid = min(live_at_save)
    b_tokens_told = {h["token"] for h in b.optimizer.history}
    assert live_at_save[tid] not in b_tokens_told
    db = Driver(b, prefix="t")
    db.n = da.n
    for _ in range(200):
        tid = min(a.live)
        a.on_trial_complete(tid, {"score": score(genomes[tid])})
        b.on_trial_complete(tid, {"score": score(genomes[tid])})
        na, ans_a = da.fill()
        nb, ans_b = db.fill()
        assert na == nb and ans_a == ans_b
        genomes.update({t: c["genome"] for t, c in na})
        if ans_a == FINISHED:
            break
    assert ans_a == FINISHED and b.optimizer.done()
    assert b.optimizer.history == a.optimizer.history
    assert b.optimizer.best() == a.optimizer.best()
    # every trial live at the save reached the restored optimizer, with its own score
    for t, token in live_at_save.items():
        assert b.told[t] == {"token": token, "score": score(genomes[t])}
        assert any(h["token"] == token and not h["cached"] for h in b.optimizer.history)


def test_restore_rejects_another_algorithm_or_version(tmp_path):
    space = make_space()
    a = searcher_for(create_optimizer("ga", space, 0, {"population": 2}), 2)
    Driver(a).fill()
    path = tmp_path / "state.pkl"
    a.save(str(path))
    with pytest.raises(ValueError, match="ga"):
        AskTellSearcher(create_optimizer("random", space, 0), 1).restore(str(path))
    state = json.loads(path.read_text())
    state["version"] = 99
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="version"):
        AskTellSearcher(create_optimizer("ga", space, 0, {"population": 2}), 1).restore(str(path))


def test_state_is_persisted_on_every_change(tmp_path):
    """With a state path, what the optimizer was told survives a SIGKILL at any moment."""
    path = tmp_path / "search_state.json"
    s = AskTellSearcher(RandomSearch(make_space(), 0, samples=3), max_concurrent=2, state_path=path)
    s.set_search_properties("score", "max", {})
    assert not path.exists()
    t0 = s.suggest("t0")
    assert json.loads(path.read_text())["live"] == {"t0": 0}
    assert json.loads(path.read_text())["candidates"]["t0"] == t0["candidate"]
    s.on_trial_complete("t0", {"score": 0.25})
    state = json.loads(path.read_text())
    assert state["live"] == {} and state["told"]["t0"] == {"token": 0, "score": 0.25}
    assert not list(tmp_path.glob("*.tmp"))


def test_requeued_candidates_run_first_and_resume_their_earlier_trials(tmp_path):
    """A stopped search restarts as a new Tune experiment: the candidates that were running
    are proposed again (same token, same genome, pointing at their earlier trials) before
    the optimizer is asked for new ones, and their results reach the optimizer as usual."""
    space = make_space()
    path = tmp_path / "state.json"
    a = AskTellSearcher(RandomSearch(space, 3, samples=5), max_concurrent=2, state_path=path)
    a.set_search_properties("score", "max", {})
    c0, c1 = a.suggest("a0")["candidate"], a.suggest("a1")["candidate"]
    a.on_trial_complete("a0", {"score": 0.5})
    c2 = a.suggest("a2")["candidate"]  # live at the "kill": a1 and a2

    located = []
    b = AskTellSearcher(RandomSearch(space, 3, samples=5), max_concurrent=2, state_path=path,
                        locate=lambda ids: located.append(ids) or [f"dir/{i}" for i in ids])
    b.set_state(json.loads(path.read_text()))
    assert b.requeue_live() == [c1["token"], c2["token"]]
    b.set_search_properties("score", "max", {})
    assert json.loads(path.read_text())["pending"]  # the requeue itself is persisted
    r1 = b.suggest("b0")
    assert r1 == {"candidate": c1, "resume_from": ["dir/a1"]}
    r2 = b.suggest("b1")
    assert r2 == {"candidate": c2, "resume_from": ["dir/a2"]}
    assert b.suggest("b2") is None  # two running
    b.on_trial_complete("b0", {"score": 0.75})
    r3 = b.suggest("b2")  # a new candidate: nothing to resume from
    assert r3["candidate"]["token"] == 3 and "resume_from" not in r3
    assert {h["token"] for h in b.optimizer.history} == {0, 1}
    assert b.optimizer.best() == (c1["genome"], 0.75)

    # Stopped again while the requeued c2 runs: its chain of earlier trials grows.
    c = AskTellSearcher(RandomSearch(space, 3, samples=5), max_concurrent=4, state_path=path,
                        locate=lambda ids: ids)
    c.set_state(json.loads(path.read_text()))
    assert c2["token"] in c.requeue_live()
    proposals = [c.suggest(f"c{i}") for i in range(3)]
    by_token = {p["candidate"]["token"]: p for p in proposals if isinstance(p, dict)}
    assert by_token[c2["token"]]["resume_from"] == ["a2", "b1"]


# --------------------------------------------------------------------------- origins


def tune_trial(stage_dir, attempt: int, trial_id: str, suggestion: dict, val_acc: float | None = None) -> None:
    """What Tune leaves in a trial directory: the config as ``params.json``, and the reports
    of a trial that trained its one epoch."""
    d = stage_dir / "tune" / f"attempt-{attempt}" / f"trial_{trial_id}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"spec": {}, **suggestion}))
    if val_acc is not None:
        (d / "result.json").write_text(json.dumps({"epoch": 1, "val_acc": val_acc, "test_acc": val_acc}) + "\n")


@pytest.mark.parametrize("backend", ["smac", "optuna"])
def test_origins_reach_the_trials_table_and_survive_a_resume(tmp_path, backend):
    """The HPO candidate carries the optimizer's origin into the trial's params.json, the
    trials table reads it from there, and a stage stopped with candidates running keeps
    every origin: the told candidates' from their old trial directories, the requeued ones'
    from the candidate the searcher persisted."""
    from safs.hpo.backends import create_backend
    from safs.hpo.space import load_space, paper_settings, with_defaults
    from safs.tune.trials import trials_frame

    cs = with_defaults(load_space("safs"), paper_settings("resnet18/cifar10"))
    options = {"n_trials": 7, **({"n_init": 3} if backend == "smac" else {})}
    path = tmp_path / "search_state.json"

    def score(candidate):
        return 0.5 + 0.01 * candidate["token"]

    a = AskTellSearcher(create_backend(backend, cs, 0, options), max_concurrent=2, state_path=path)
    a.set_search_properties("score", "max", {})
    first = {}
    for i in range(4):  # t0, t1 start; t0 finishes; t2 starts; t1 finishes; t3 starts
        out = a.suggest(f"t{i}")
        first[f"t{i}"] = out
        tune_trial(tmp_path, 1, f"t{i}", out)
        if i in (1, 2):
            done = f"t{i - 1}"
            a.on_trial_complete(done, {"score": score(first[done]["candidate"])})
            (tmp_path / "tune/attempt-1" / f"trial_{done}").joinpath("result.json").write_text(
                json.dumps({"epoch": 1, "val_acc": score(first[done]["candidate"]), "test_acc": 0.1}) + "\n")
    assert first["t0"]["candidate"]["origin"] == "default"
    assert first["t0"]["candidate"]["config"] == dict(cs.get_default_configuration())
    saved = json.loads(path.read_text())  # the stage is killed: t2 and t3 were running
    assert {c["token"]: c["origin"] for c in saved["candidates"].values()} == {
        2: first["t2"]["candidate"]["origin"], 3: first["t3"]["candidate"]["origin"]}

    b = AskTellSearcher(create_backend(backend, cs, 0, options), max_concurrent=2, state_path=path)
    b.set_state(saved)
    b.set_search_properties("score", "max", {})
    assert b.requeue_live() == [2, 3]
    live, n = [], 0
    while True:
        out = b.suggest(f"u{n}")
        if isinstance(out, dict):
            live.append((f"u{n}", out))
            tune_trial(tmp_path, 2, f"u{n}", out, score(out["candidate"]))
            n += 1
            continue
        if out == Searcher.FINISHED:
            break
        trial_id, out = live.pop(0)
        b.on_trial_complete(trial_id, {"score": score(out["candidate"])})
    told = {int(v["token"]) for v in json.loads(path.read_text())["told"].values()}
    df = trials_frame(tmp_path, {"epochs_per_trial": 1}, told).set_index("token")
    assert list(df.index) == list(range(7)) and set(df["status"]) == {"done"}
    assert df["origin"].to_dict() == {t: b.optimizer.origin(t) for t in range(7)}
    for trial_id in ("t0", "t1", "t2", "t3"):
        token = first[trial_id]["candidate"]["token"]
        assert df.loc[token, "origin"] == first[trial_id]["candidate"]["origin"]
    assert df.loc[2, "trial_id"].startswith("u")  # the requeued rows come from the new attempt
    assert df.loc[0, "origin"] == "default" and (df["origin"] == "default").sum() == 1
    if backend == "smac":
        assert list(df.loc[1:2, "origin"]) == ["initial_design"] * 2
        assert set(df.loc[3:, "origin"]) <= {"model", "random"}
    else:
        assert set(df.loc[1:, "origin"]) == {"sampler"}


def test_genome_candidates_carry_no_origin_and_their_rows_leave_it_null(tmp_path):
    from safs.tune.trials import trials_frame

    s = searcher_for(RandomSearch(make_space(), 0, samples=2), max_concurrent=2)
    assert s.optimizer.origin(0) is None
    for i in range(2):
        out = s.suggest(f"t{i}")
        assert "origin" not in out["candidate"]
        tune_trial(tmp_path, 1, f"t{i}", out, 0.5)
    df = trials_frame(tmp_path, {"epochs_per_candidate": 1})
    assert "origin" in df.columns and df["origin"].isna().all()


# --------------------------------------------------------------------------- a real Tune run

TOY_SPACE = GenomeSpace(("s0", "s1", "s2"), ("a", "b", "c", "boom"), None)
TOY_TABLE = {"a": 0.3, "b": 0.5, "c": 0.2, "boom": 0.0}


def toy_score(genome: dict) -> float:
    return sum(TOY_TABLE[op] * (i + 1) for i, op in enumerate(genome[s] for s in TOY_SPACE.slots))


def toy_trainable(config: dict) -> None:
    """One report per trial; a genome with 'boom' in its first slot crashes."""
    from ray import tune

    genome = config["candidate"]["genome"]
    if genome["s0"] == "boom":
        raise RuntimeError("boom in s0")
    tune.report({"score": toy_score(genome), "token": config["candidate"]["token"]})


def expected_ga_run(seed: int, options: dict):
    """The same GA driven by hand: which genomes it trains, which fail, its best."""
    ga = create_optimizer("ga", TOY_SPACE, seed, options)
    while not ga.done():
        asked = []
        while (item := ga.ask()) is not None:
            asked.append(item)
        for token, genome in asked:
            ga.tell(token, None if genome["s0"] == "boom" else toy_score(genome))
    trained = [h for h in ga.history if not h["cached"]]
    return trained, ga.best()


@pytest.mark.timeout(120)
def test_real_tune_run_with_a_ga(tmp_path, ray_session):
    from ray import cloudpickle
    import sys
    from ray import tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    options = {"population": 4, "generations": 3}
    seed = 0
    trained, best = expected_ga_run(seed, options)
    failing = [h for h in trained if h["score"] is None]
    assert failing and len(failing) < len(trained)  # the seed shows both outcomes

    searcher = AskTellSearcher(create_optimizer("ga", TOY_SPACE, seed, options), max_concurrent=2,
                               state_path=tmp_path / "state.json")
    tuner = tune.Tuner(
        toy_trainable,
        param_space={},
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=-1, search_alg=searcher,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="x", verbose=0),
    )
    grid = tuner.fit()

    genomes = [r.config["candidate"]["genome"] for r in grid]
    assert len(grid) == len(trained)  # one trial per distinct genome the GA trained
    assert sorted(tuple(g.values()) for g in genomes) == sorted(tuple(h["genome"].values()) for h in trained)
    assert sorted(r.config["candidate"]["token"] for r in grid) == list(range(len(trained)))
    errored = [r for r in grid if r.error is not None]
    assert sorted(tuple(r.config["candidate"]["genome"].values()) for r in errored) == \
        sorted(tuple(h["genome"].values()) for h in failing)
    for r in grid:
        if r.error is None:
            assert r.metrics["score"] == pytest.approx(toy_score(r.config["candidate"]["genome"]))

    state = json.loads((tmp_path / "state.json").read_text())
    assert state is not None and state["finished"] and state["live"] == {} and state["done"]
    assert state["optimizer"]["algorithm_state"]["generation"] == options["generations"]
    assert state["best"]["genome"] == best[0] and state["best"]["score"] == pytest.approx(best[1])
    told = state["told"]
    assert len(told) == len(trained)
    assert sum(v["score"] is None for v in told.values()) == len(failing)
    assert math.isclose(max(r.metrics["score"] for r in grid if r.error is None), best[1])
