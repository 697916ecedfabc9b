"""A search stage's trials table from its trial directories (JSON only), across attempts."""

import json
from pathlib import Path

import pandas as pd

from safs.tune.trials import best_candidate, trial_dirs, trials_frame

STAGE = {"epochs_per_candidate": 3}


def trial(stage_dir: Path, attempt: int, trial_id: str, token: int, accs: list[float], *, first_epoch: int = 1,
          error: str | None = None, failed: str | None = None, final: bool = False,
          candidate: dict | None = None) -> Path:
    """A trial directory; ``candidate`` (without the token) replaces the default genome one."""
    d = stage_dir / "tune" / f"attempt-{attempt}" / f"trial_{trial_id}"
    d.mkdir(parents=True)
    cand = {"token": token, **(candidate or {"genome": {"s0": f"op{token}"}})}
    (d / "params.json").write_text(json.dumps({"spec": {}, "candidate": cand}))
    lines = [{"epoch": first_epoch + i, "val_acc": a, "test_acc": a / 2, "time_total_s": 1.0 + i}
             for i, a in enumerate(accs)]
    if failed:
        lines.append({"epoch": 3, "score": float("nan"), "failed": failed, "time_total_s": 0.5})
    (d / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"epoch": 9, "val_a')  # cut by a kill
    if error:
        (d / "error.txt").write_text(f"Failure # 1 (occurred at 2026-01-01)\nTraceback...\n{error}\n")
    if final:
        c = d / "checkpoint_000002"
        c.mkdir()
        (c / "model.pt").write_bytes(b"x")
        (c / "history.json").write_text("[]")
    return d


def test_rows_merge_a_candidates_trials_across_attempts(tmp_path):
    trial(tmp_path, 1, "a", 0, [0.1, 0.2, 0.3], final=True)
    trial(tmp_path, 1, "b", 1, [0.4])  # running when the stage stopped...
    trial(tmp_path, 2, "c", 1, [0.5, 0.35], first_epoch=2, final=True)  # ...continued from epoch 1
    trial(tmp_path, 1, "d", 2, [0.2], error="RuntimeError: boom")  # kept failing
    trial(tmp_path, 2, "e", 3, [0.9])  # stopped early by successive halving
    trial(tmp_path, 2, "f", 4, [0.3], failed="training loss is nan")
    df = trials_frame(tmp_path, STAGE).set_index("token")
    assert list(df.index) == [0, 1, 2, 3, 4]
    assert df.loc[1, "trial_id"] == "c" and list(df.loc[1, "val_acc_per_epoch"]) == [0.4, 0.5, 0.35]
    assert df.loc[1, "status"] == "done" and df.loc[1, "score"] == 0.5 and df.loc[1, "best_epoch"] == 2
    assert df.loc[1, "test_acc"] == 0.25 and df.loc[1, "wall_s"] == 1.0 + 2.0
    assert df.loc[2, "status"] == "failed" and df.loc[2, "error"] == "RuntimeError: boom"
    assert df.loc[3, "status"] == "stopped" and pd.isna(df.loc[3, "error"])
    assert df.loc[4, "status"] == "failed" and df.loc[4, "error"] == "training loss is nan"
    assert json.loads(df.loc[0, "genome"]) == {"s0": "op0"}
    assert list(trials_frame(tmp_path, STAGE, {0, 3}).token) == [0, 3]


def test_an_error_before_a_successful_retry_is_not_a_failure(tmp_path):
    trial(tmp_path, 1, "a", 0, [0.1, 0.2, 0.3], error="RayActorError: the worker died", final=True)
    row = trials_frame(tmp_path, STAGE).iloc[0]
    assert row.status == "done" and pd.isna(row.error)


def test_best_candidate_is_the_top_finished_one_with_its_final_checkpoint(tmp_path):
    trial(tmp_path, 1, "a", 0, [0.1, 0.2, 0.6], final=True)
    trial(tmp_path, 1, "b", 1, [0.6, 0.1, 0.1], final=True)  # same score, later token
    trial(tmp_path, 1, "c", 2, [0.9])  # better, but stopped early
    df = trials_frame(tmp_path, STAGE)
    row, ckpt = best_candidate(df, tmp_path)
    assert row["token"] == 0 and ckpt == tmp_path / "tune/attempt-1/trial_a/checkpoint_000002"
    assert best_candidate(df[df.token == 2], tmp_path) is None
    # a genome search has no configs; read back from parquet they can be NaN, not None
    nan_configs = df.assign(config=float("nan"))
    best = best_candidate(nan_configs, tmp_path)[0]
    assert best["token"] == 0 and best["config"] is None
    assert best_candidate(df.assign(genome=float("nan")), tmp_path)[0]["genome"] is None


def test_attempts_are_ordered_by_number_not_name(tmp_path):
    for n in (2, 10, 1):
        trial(tmp_path, n, f"t{n}", n, [0.1])
    assert [d.parent.name for d in trial_dirs(tmp_path)] == ["attempt-1", "attempt-2", "attempt-10"]
    assert trial_dirs(tmp_path, ["t10"]) == [tmp_path / "tune/attempt-10/trial_t10"]


def test_an_epoch_whose_report_a_kill_cut_off_comes_from_the_checkpoint(tmp_path):
    """Killed after epoch 2's checkpoint was written but while its report line was: the
    continued trial starts at epoch 3, and epoch 2 is read from the checkpoint's history."""
    first = trial(tmp_path, 1, "a", 0, [0.1])  # epoch 1 reported, epoch 2's line cut
    ckpt = first / "checkpoint_000001"
    ckpt.mkdir()
    (ckpt / "history.json").write_text(json.dumps([{"epoch": 1, "val_acc": 0.1, "test_acc": 0.05},
                                                   {"epoch": 2, "val_acc": 0.7, "test_acc": 0.35}]))
    trial(tmp_path, 2, "b", 0, [0.4], first_epoch=3, final=True)
    row = trials_frame(tmp_path, STAGE).iloc[0]
    assert row.status == "done" and row.epochs == 3
    assert list(row.val_acc_per_epoch) == [0.1, 0.7, 0.4]
    assert row.score == 0.7 and row.best_epoch == 2 and row.test_acc == 0.35


def hpo(config: dict, origin: str | None = None) -> dict:
    return {"config": config, **({"origin": origin} if origin else {})}


def test_the_origin_column_comes_from_the_candidate_and_survives_a_rerun(tmp_path):
    trial(tmp_path, 1, "a", 0, [0.1, 0.2, 0.3], candidate=hpo({"lr": 0.1}, "default"))
    trial(tmp_path, 1, "b", 1, [0.4], candidate=hpo({"lr": 0.2}, "initial_design"))  # running at the stop
    trial(tmp_path, 2, "c", 1, [0.5, 0.35], first_epoch=2, candidate=hpo({"lr": 0.2}, "initial_design"))
    trial(tmp_path, 2, "d", 2, [0.2, 0.2, 0.2], candidate=hpo({"lr": 0.3}, "model"))
    trial(tmp_path, 2, "e", 3, [0.2, 0.2, 0.2], candidate=hpo({"lr": 0.4}))  # asked before origins existed
    df = trials_frame(tmp_path, STAGE)
    assert list(df.columns).index("origin") == list(df.columns).index("config") + 1
    assert list(df["origin"][:3]) == ["default", "initial_design", "model"] and pd.isna(df["origin"][3])
    assert df.iloc[0]["origin"] == "default" and df.iloc[1]["trial_id"] == "c"
    path = tmp_path / "trials.parquet"
    df.to_parquet(path)
    assert list(pd.read_parquet(path)["origin"][:3]) == ["default", "initial_design", "model"]
    genome_only = tmp_path / "genomes"
    trial(genome_only, 1, "g", 0, [0.1, 0.2, 0.3])
    assert trials_frame(genome_only, STAGE)["origin"].isna().all()


def test_multi_fidelity_best_is_ranked_at_the_highest_budget_first(tmp_path):
    """As SMAC's incumbent: a 1-epoch 0.81 does not beat a 3-epoch 0.80."""
    trial(tmp_path, 1, "a", 0, [0.81], candidate=hpo({"lr": 0.1, "budget": 1.0}), final=True)
    trial(tmp_path, 1, "b", 1, [0.5, 0.6, 0.80], candidate=hpo({"lr": 0.2, "budget": 3.0}), final=True)
    trial(tmp_path, 1, "c", 2, [0.5, 0.6, 0.79], candidate=hpo({"lr": 0.3, "budget": 3.0}), final=True)
    trial(tmp_path, 1, "d", 3, [0.9], candidate=hpo({"lr": 0.4, "budget": 1.0}), final=True)
    df = trials_frame(tmp_path, STAGE)
    assert set(df["status"]) == {"done"}
    row, _ = best_candidate(df, tmp_path)
    assert row["token"] == 1 and json.loads(row["config"])["budget"] == 3.0
    assert "_budget" not in row
    # without a final checkpoint at the top budget, the best of the next budget down
    assert best_candidate(df[df.token.isin([0, 3])], tmp_path)[0]["token"] == 3
    for d in (tmp_path / "tune/attempt-1").glob("trial_[bc]/checkpoint_*"):
        (d / "model.pt").unlink()
    assert best_candidate(df, tmp_path)[0]["token"] == 3


def test_attempts_are_numbered_and_named_by_their_stage(tmp_path):
    from safs.plan import plan
    from safs.config import parse_pipeline
    from safs.tune.experiment import _next_attempt
    from safs.tune.trials import attempt_number

    import yaml

    cfg = parse_pipeline(yaml.safe_load(
        "name: a\ndata: {name: digits}\nmodel: {name: lenet5}\nstages:\n"
        "  - {name: one, kind: train, epochs: 1}\n  - {name: two, kind: train, epochs: 1}\n"))
    one, two = plan(cfg, tmp_path)
    # unique per stage: two stages starting in the same second on one Ray must not share Tune's staging
    assert _next_attempt(one) == f"attempt-1-{one.hash}" != _next_attempt(two)
    (one.dir / "tune" / f"attempt-1-{one.hash}").mkdir(parents=True)
    (one.dir / "tune" / "attempt-9").mkdir()  # written before the hash joined the name
    (one.dir / "tune" / "attempt-x").mkdir()  # not an attempt
    assert _next_attempt(one) == f"attempt-10-{one.hash}"
    assert [attempt_number(n) for n in ("attempt-3", f"attempt-3-{one.hash}", "attempt-", "other")] == [3, 3, None, None]
