"""The benchmarks keep working: each one's ``--smoke`` mode (tiny sizes on the CPU)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def test_gpu_train_smoke(capsys):
    out = load("gpu_train").main(["--smoke"])
    assert set(out) == {"resnet18", "vgg16"}
    assert all(v["safs_epochs_per_s"] > 0 and v["hand_epochs_per_s"] > 0 for v in out.values())
    assert "(smoke)" in capsys.readouterr().out


def test_stage_overhead_reads_wall_minus_epoch_times_from_the_records(tmp_path, capsys):
    import json

    run = tmp_path / "quickstart"
    for i, (name, wall, epochs) in enumerate([("dense", 10.0, [2.0, 3.0]), ("prune", 2.5, [0.5]),
                                              ("retrain", 8.0, [1.0, 1.0, 1.0])], start=1):
        d = run / f"{i:02d}-{name}-0123456789"
        d.mkdir(parents=True)
        history = [{"epoch": e + 1, "epoch_s": s} for e, s in enumerate(epochs)]
        (d / "stage.json").write_text(json.dumps({"status": "done", "name": name, "wall_s": wall, "history": history}))
    out = load("stage_overhead").main(["--run", str(run)])
    assert out["median_overhead_s"] == pytest.approx(5.0)  # overheads 5.0, 2.0, 5.0
    assert out["stages_wall_s"] == pytest.approx(20.5)
    assert "median overhead per stage: 5.0 s" in capsys.readouterr().out


def test_nm_speed_smoke(capsys):
    out = load("nm_speed").main(["--smoke"])
    assert out["smoke"] and out["device"] == "cpu" and len(out["results"]) == 2
    for row in out["results"]:
        assert row["dense_ms"] > 0 and row["masked"]["ms"] > 0
        assert row["masked"]["rel_err"] < 1e-5  # the masked product is the 2:4 weight's
        assert all("ratio" not in row[k] for k in ("masked", "cusparselt", "cutlass"))
        # PyTorch's semi-structured tensors are CUDA-only: the CPU reports them unsupported
        assert all("error" in row[b] or "ms" in row[b] for b in ("cusparselt", "cutlass"))
    printed = capsys.readouterr().out
    assert "NO SPEED CLAIM" in printed and "(smoke)" in printed
