"""The Tune experiment of a stage treats both search kinds alike: a progress bar in
candidates, one checkpoint kept per trial; a training stage counts epochs and keeps two. The
local Ray it starts listens on the loopback only."""

import json
import shutil
import subprocess
import sys
import tempfile

import yaml

import pytest

from conftest import kill_ray_leftovers, subprocess_env
from safs.config import parse_pipeline
from safs.plan import plan

PIPELINE = """
name: kinds
data: {name: digits}
model: {name: lenet5}
sparsity: {method: lwm, target: 0.5}
stages:
  - {name: dense, kind: train, epochs: 3}
  - {name: prune, kind: prune}
  - {name: search, kind: activation_search, algorithm: random, options: {samples: 2}, epochs_per_candidate: 2}
  - {name: hpo, kind: hpo, backend: optuna, trials: 2, epochs_per_trial: 2}
"""


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    cfg = parse_pipeline(yaml.safe_load(PIPELINE), source="kinds")
    return {st.name: st for st in plan(cfg, tmp_path_factory.mktemp("results"))}


def test_search_kind_is_asked_on_the_stage(stages):
    assert not stages["dense"].is_search and not stages["prune"].is_search
    assert stages["search"].is_search and stages["hpo"].is_search


@pytest.mark.parametrize("name, keep", [("dense", 2), ("search", 1), ("hpo", 1)])
def test_checkpoints_kept_per_trial(stages, name, keep):
    from safs.tune.experiment import _run_config

    st = stages[name]
    cfg = _run_config(st, st.spec, True, "attempt-1")
    assert cfg.checkpoint_config.num_to_keep == keep


class _Trial:
    def __init__(self, score):
        self.last_result = {"score": score}


@pytest.mark.parametrize("name", ["search", "hpo"])
def test_search_stages_count_candidates(stages, name, monkeypatch):
    import tqdm

    from safs.tune.experiment import _progress_callback

    bars = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.postfix = kw, kw.get("initial", 0), None
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_postfix(self, **kw):
            self.postfix = kw

        def refresh(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    progress = _progress_callback(stages[name], quiet=False)
    progress.on_trial_result(0, [], _Trial(0.5), {"epoch": 1, "val_acc": 0.5})  # epochs do not move it
    progress.on_trial_complete(0, [], _Trial(0.5))
    progress.on_trial_complete(0, [], _Trial(0.7))
    (bar,) = bars
    assert bar.kw["unit"] == "cand" and bar.kw["total"] is None
    assert bar.n == 2 and bar.postfix == {"best": "0.7000"}


def test_training_stage_counts_epochs(stages, monkeypatch):
    import tqdm

    from safs.tune.experiment import _progress_callback

    seen = {}
    monkeypatch.setattr(tqdm, "tqdm", lambda **kw: seen.update(kw) or _Stub())
    progress = _progress_callback(stages["dense"], quiet=False)
    progress.on_trial_result(0, [], None, {"epoch": 1, "val_acc": 0.5})
    assert seen["unit"] == "epoch" and seen["total"] == 3


class _Stub:
    n = 0

    def set_postfix(self, **kw):
        pass

    def refresh(self):
        pass


# --------------------------------------------------------------------------- the local Ray

LISTENING = """
import json, psutil
from safs.tune.experiment import ensure_ray
ensure_ray(num_cpus=1)
import ray
addresses = {}
for p in [psutil.Process()] + psutil.Process().children(recursive=True):
    try:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                addresses.setdefault(c.laddr.ip, []).append(p.name())
    except psutil.Error:
        pass
print(json.dumps({"listening": addresses, "node_ip": ray.util.get_node_ip_address()}))
ray.shutdown()
"""


@pytest.mark.timeout(180)
def test_local_ray_listens_on_loopback_only():
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    try:
        p = subprocess.run([sys.executable, "-c", LISTENING], env=env, capture_output=True, text=True, timeout=150)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["node_ip"] == "127.0.0.1"
    names = {n for ns in got["listening"].values() for n in ns}
    assert {"gcs_server", "raylet"} <= names  # the probe sees Ray's own servers
    assert set(got["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, got["listening"]
