import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    from safs.tune.experiment import ensure_ray  # also sets Tune's environment defaults

    ensure_ray(num_cpus=2)  # loopback only, no dashboard
    yield
    ray.shutdown()


def safs_cmd() -> list[str]:
    return [sys.executable, "-m", "safs.cli"]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models train faster on one thread than on two contended ones."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# A dense -> prune -> retrain pipeline on a small dataset; format with data, dense, retrain epochs.
E2E_PIPELINE = """
name: e2e
seed: 1
data: {{name: {data}}}
model: {{name: lenet5}}
sparsity: {{method: lwm, target: 0.8}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: {dense}}}
  - {{name: prune, kind: prune}}
  - {{name: retrain, kind: train, epochs: {retrain}}}
"""


def records(run_dir: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(run_dir.glob("*/stage.json")):
        out[f.parent.name] = json.loads(f.read_text())
    return out


def by_stage(recs: dict[str, dict], name: str) -> dict:
    [rec] = [r for d, r in recs.items() if d.split("-")[1] == name]
    return rec


def trials_by_token(stage_dir: Path) -> dict[int, list[Path]]:
    """Each candidate's trial directories, oldest first. A directory Tune created when a kill came
    but never started has no ``params.json``; ``trials.parquet`` skips it, and so does this."""
    out: dict[int, list[Path]] = {}
    for d in sorted(stage_dir.glob("tune/*/trial_*")):
        if (d / "params.json").is_file():
            out.setdefault(json.loads((d / "params.json").read_text())["candidate"]["token"], []).append(d)
    return out


def kill_ray_leftovers(ray_tmp: str) -> None:
    """Ray processes of the killed driver outlive it; stop exactly those, by PID."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if ray_tmp in cmd or any(ray_tmp in f.path for f in proc.open_files()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def our_own_check(stage_dir: Path) -> tuple[float, float]:
    """Test accuracy and the fraction of zero conv/linear weights of a stage's model.pt,
    computed without safs's training code."""
    import torch

    import safs
    from safs.data import normalise

    rec = json.loads((stage_dir / "stage.json").read_text())
    d = rec["spec"]["data"]
    ds = safs.load_dataset(d["name"], d["data_dir"], seed=d["split_seed"], val_fraction=d["val_fraction"],
                           test_fraction=d["test_fraction"])
    model = safs.load_model(stage_dir)
    test = ds.split("test")
    with torch.no_grad():
        acc = (model(normalise(test.x, ds)).argmax(1) == test.y).float().mean().item()
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return acc, zeros
