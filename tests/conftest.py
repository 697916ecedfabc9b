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


# --------------------------------------------------------------------------- sparse training by hand
# The training hooks of a sparse method driven the way ``safs.stages.train.fit`` drives them, on
# LeNet-5 and random MNIST-shaped batches: for tests of the methods themselves.
MNIST_SHAPE = (1, 28, 28)


def lenet(seed: int = 0, shape: tuple = MNIST_SHAPE):
    import torch

    from safs.models import create_model

    torch.manual_seed(seed)
    return create_model("lenet5", 10, shape)


def random_batches(n: int = 12, size: int = 8, seed: int = 1, shape: tuple = MNIST_SHAPE) -> list:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def method_sgd(model, method, lr: float = 0.05, weight_decay: float = 5e-4):
    """SGD with momentum over the parameter groups the method arranges."""
    import torch

    groups = method.param_groups(model, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def method_step(model, method, opt, x, y) -> None:
    from torch import nn

    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    method.before_step()
    opt.step()
    method.after_step()


def train_with_method(model, method, data, epochs: int = 1, opt=None, on_step=None):
    """``epochs`` passes over ``data`` with the method's hooks; returns the optimizer."""
    opt = opt or method_sgd(model, method)
    method.on_train_start(len(data), epochs, 0)
    for e in range(epochs):
        method.on_epoch_start(e)
        for x, y in data:
            method_step(model, method, opt, x, y)
            if on_step:
                on_step()
        method.on_epoch_end(e)
    return opt


# --------------------------------------------------------------------------- image trees
# Class folders of real PNG and JPEG files (test_imagefolder.py, test_streaming.py).

COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # class c: channel c dominates


def tree_image(c: int, i: int, h: int = 40, w: int = 30) -> "torch.Tensor":  # noqa: F821
    """A coloured rectangle on black, class c's colour; i moves it so images differ."""
    import torch

    img = torch.zeros(3, h, w, dtype=torch.uint8)
    top, left = 4 + i % 6, 3 + i % 5
    img[:, top : top + h // 2, left : left + w // 2] = torch.tensor(COLOURS[c], dtype=torch.uint8).view(3, 1, 1)
    return img


def write_tree(root: Path, per_class: int = 20, classes: int = 3, h: int = 40, w: int = 30, grey_every: int = 0):
    """Alternating PNG and JPEG files; with ``grey_every`` some PNGs are single-channel."""
    from torchvision.io import write_jpeg, write_png

    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = tree_image(c, i, h, w)
            if i % 2:
                if grey_every and i % grey_every == 1:
                    img = img.max(0, keepdim=True).values
                write_png(img, str(d / f"img_{i:03d}.png"))
            else:
                write_jpeg(img, str(d / f"img_{i:03d}.JPG"), quality=95)
    return root


# --------------------------------------------------------------------------- a train stage outside Ray
# ``fit`` run in the test process against a recording session: for recipes and evaluation work.
FIT_PIPELINE = """
name: scale
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
resources: {{cpus_per_trial: 1}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}{extra}}}
stages:
  - {{name: dense, kind: train, epochs: 3}}
"""


def stage_spec(tmp_path, extra: str = "") -> dict:
    """The planned spec of FIT_PIPELINE's one train stage, ``extra`` added to its train settings."""
    import yaml

    from safs.config import parse_pipeline
    from safs.plan import plan

    cfg = parse_pipeline(yaml.safe_load(FIT_PIPELINE.format(extra=extra)))
    return plan(cfg, tmp_path)[0].spec


def run_fit(monkeypatch, spec: dict, epochs: int, token=None, evaluations=None) -> tuple[list[dict], list[dict]]:
    """``fit`` without Ray: the reports it makes, in order, and the history of its last
    checkpoint; ``evaluations`` counts the calls of ``evaluate``."""
    import contextlib
    import copy

    import torch

    from safs import model_file
    from safs.stages import common, session, train

    reports: list[dict] = []
    saved: list[list[dict]] = []
    monkeypatch.setattr(common, "write_history", lambda d, history: saved.append(copy.deepcopy(history)))

    class Recording:  # reports kept in memory; nothing to continue from
        def report(self, metrics, checkpoint=None):
            reports.append(dict(metrics))

        restored = contextlib.nullcontext

    if evaluations is not None:
        from safs.training.loop import evaluate as real

        def counted(model, batches, **kw):
            evaluations.append(1)
            return real(model, batches, **kw)

        monkeypatch.setattr(train, "evaluate", counted)
    ds = common.dataset(spec, torch.device("cpu"))
    model = model_file.new_model(spec, ds)
    with session.use(Recording()):
        train.fit(spec, model, spec["stage"], epochs, token=token)
    return reports, saved[-1]


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
