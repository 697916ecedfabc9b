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
