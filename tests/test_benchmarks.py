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
