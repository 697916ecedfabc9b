"""The Optuna backend keeps its study in an Optuna journal file in the stage directory, which
``optuna.load_study`` opens, consistent with the searcher's JSON state across resumes."""

import pickle

import optuna
import pytest
from ConfigSpace import Categorical, ConfigurationSpace, Float
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from safs.hpo.backends import create_backend
from safs.hpo.optuna import JOURNAL


def space() -> ConfigurationSpace:
    cs = ConfigurationSpace(seed=0)
    cs.add([Float("lr", (1e-4, 1e-1), log=True, default=1e-2), Categorical("opt", ["sgd", "adam"], default="adam")])
    return cs


def score(config: dict) -> float:
    return -abs(config["lr"] - 0.01) + (0.1 if config["opt"] == "adam" else 0.0)


def journal(path):
    study = optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(str(path))))
    return study.get_trials(deepcopy=False)


def test_journal_matches_the_state_across_resumes_without_duplicates(tmp_path):
    opt = create_backend("optuna", space(), 0, {"n_trials": 6})
    opt.use_directory(tmp_path)
    for _ in range(3):
        token, config = opt.ask()
        opt.tell(token, None if token == 1 else score(config))
    outstanding, config = opt.ask()  # running when the "kill" comes
    trials = journal(tmp_path / JOURNAL)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING]
    assert trials[0].params == {"lr": 0.01, "opt": "adam"}  # the default configuration comes first

    state = opt.state_dict()
    resumed = create_backend("optuna", space(), 0, {"n_trials": 6})
    resumed.use_directory(tmp_path)
    resumed.load_state_dict(state)  # rebuilds the journal from the state: nothing twice
    assert [t.state for t in journal(tmp_path / JOURNAL)] == [t.state for t in trials]
    copy = pickle.loads(pickle.dumps(resumed))  # Tune drives an unpickled copy
    copy.tell(outstanding, score(config))
    while (asked := copy.ask()) is not None:
        copy.tell(asked[0], score(asked[1]))
    assert copy.done()
    trials = journal(tmp_path / JOURNAL)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    told = [r for r in copy.history if r["score"] is not None]
    assert len(trials) == 6 and len(complete) == len(told) == 5
    assert sorted(t.value for t in complete) == sorted(r["score"] for r in told)


def test_without_a_directory_the_study_stays_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = create_backend("optuna", space(), 0, {"n_trials": 2})
    token, config = opt.ask()
    opt.tell(token, score(config))
    assert not list(tmp_path.iterdir())


def test_use_directory_after_the_study_exists_moves_it_into_the_journal(tmp_path):
    opt = create_backend("optuna", space(), 0, {"n_trials": 3})
    token, config = opt.ask()
    opt.tell(token, score(config))
    opt.use_directory(tmp_path)
    assert [t.state for t in journal(tmp_path / JOURNAL)] == [TrialState.COMPLETE]
    token, config = opt.ask()
    opt.tell(token, score(config))
    assert len(journal(tmp_path / JOURNAL)) == 2


@pytest.mark.parametrize("backend", ["optuna"])
def test_use_directory_is_no_option(backend):
    from safs.hpo.backends import backend_options

    assert "journal_path" not in backend_options(backend) and "use_directory" not in backend_options(backend)
