"""Plugins: entry points (loaded lazily, clashes named), in-process registration (reaching the
Ray workers), and the example plugin installed and run end to end."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import safs
from conftest import ROOT, by_stage, records, safs_cmd, subprocess_env
from safs.config import ConfigError

EXAMPLE = ROOT / "examples" / "plugin"

# One module providing an entry of every group; importing it leaves a trace in sys.modules only.
FAKE_MODULE = '''
from torch import nn
from safs.activations import ActivationSlot
from safs.search.random_search import RandomSearch
from safs.sparsity.base import SparseMethod


def build(num_classes, input_shape, activation, *, width=8):
    """a fake net"""
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), ActivationSlot(activation),
                         nn.Linear(width, num_classes))


build.default_activation = "fake_op"


def load(data_dir=None, *, seed=0, val_fraction=None, test_fraction=None):
    """a fake dataset"""
    from safs.data import load_dataset
    return load_dataset("digits", seed=seed)


load.num_classes = 10
load.input_shape = (1, 8, 8)


class Method(SparseMethod):
    """a fake method"""
    name = "fake_method"
    control = "exact"
    protocol = "one_shot"


class Algo(RandomSearch):
    """a fake algorithm"""


class Op(nn.Module):
    def forward(self, x, alpha, beta):
        return alpha * (beta * x).clamp(min=0)


class Backend:
    def __init__(self, configspace, seed, n_trials=3, flavour="plain"):
        pass
'''


def fake_dist(root: Path, dist: str, module: str, entries: dict[str, dict[str, str]], source: str = FAKE_MODULE):
    """An installed distribution on path ``root``: its metadata, entry points and one module."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = []
    for group, eps in entries.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (root / f"{module}.py").write_text(source)


def run_python(code: str, *paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = subprocess_env(PYTHONPATH=":".join([*map(str, paths), str(ROOT)]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd)


ALL = {
    "safs.models": {"fake_net": "fake_mod:build"},
    "safs.datasets": {"fake_data": "fake_mod:load"},
    "safs.methods": {"fake_method": "fake_mod:Method"},
    "safs.algorithms": {"fake_algo": "fake_mod:Algo"},
    "safs.operators": {"fake_op": "fake_mod:Op"},
    "safs.hpo_backends": {"fake_backend": "fake_mod:Backend"},
}


def test_entry_points_are_listed_without_loading_and_loaded_on_use(tmp_path):
    fake_dist(tmp_path, "fake-plugin", "fake_mod", ALL)
    out = run_python('''
        import sys
        from safs.models import list_models, model_info, create_model, default_activation
        from safs.data import list_datasets, dataset_info, dataset_shape, load_dataset
        from safs.sparsity import list_methods, method_protocol, plugin_dist
        from safs.search import list_optimizers, create_optimizer, optimizer_options
        from safs.hpo.backends import list_backends, backend_options
        from safs.activations import list_operators, OPERATORS, create_operator
        assert "fake_net" in list_models() and model_info("fake_net").split() == ["fake_net", "(plugin:", "fake-plugin)"]
        assert "fake_data" in list_datasets() and dataset_info("fake_data") == "fake_data: (plugin: fake-plugin)"
        assert "fake_method" in list_methods() and plugin_dist("fake_method") == "fake-plugin"
        assert "fake_algo" in list_optimizers() and "fake_backend" in list_backends()
        assert "fake_op" in list_operators() and "fake_op" in OPERATORS
        assert "fake_mod" not in sys.modules  # listing and membership load nothing
        assert dataset_shape("fake_data") == (10, (1, 8, 8))
        assert "fake_mod" in sys.modules
        assert default_activation("fake_net") == "fake_op"
        model = create_model("fake_net", 10, (1, 8, 8), width=4)
        assert type(model[2].op).__name__ == "Op" and model[1].out_features == 4
        assert load_dataset("fake_data").num_classes == 10
        assert method_protocol("fake_method") == "one_shot"
        assert optimizer_options("fake_algo")["samples"] == 21
        assert list(backend_options("fake_backend")) == ["n_trials", "flavour"]
        print("ok")
    ''', tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

    listed = subprocess.run([*safs_cmd(), "list", "models"], capture_output=True, text=True, cwd=ROOT,
                            env=subprocess_env(PYTHONPATH=f"{tmp_path}:{ROOT}"))
    assert listed.returncode == 0, listed.stderr
    assert any(line.split() == ["fake_net", "(plugin:", "fake-plugin)"] for line in listed.stdout.splitlines())


def test_a_pipeline_validates_with_plugin_names(tmp_path):
    fake_dist(tmp_path, "fake-plugin", "fake_mod", ALL)
    pipeline = {"name": "p", "data": {"name": "fake_data"}, "model": {"name": "fake_net", "activation": "fake_op"},
                "sparsity": {"method": "fake_method", "target": 0.5},
                "stages": [{"name": "dense", "kind": "train", "epochs": 1}, {"name": "prune", "kind": "prune"},
                           {"name": "search", "kind": "activation_search", "algorithm": "fake_algo"}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    out = run_python('''
        import safs
        df = safs.run("p.yaml", dry_run=True)
        assert list(df.stage) == ["dense", "prune", "search"], df
        print("ok")
    ''', tmp_path, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("group, name, kind", [
    ("safs.models", "lenet5", "model"), ("safs.datasets", "digits", "dataset"),
    ("safs.methods", "lwm", "sparse method"), ("safs.algorithms", "lahc", "search algorithm"),
    ("safs.operators", "relu", "activation operator"), ("safs.hpo_backends", "smac", "HPO backend")])
def test_a_plugin_cannot_take_a_builtin_name(tmp_path, group, name, kind):
    fake_dist(tmp_path, "clashing-plugin", "fake_mod", {group: {name: "fake_mod:Op"}})
    read = {"safs.models": "from safs.models import list_models as f",
            "safs.datasets": "from safs.data import list_datasets as f",
            "safs.methods": "from safs.sparsity import list_methods as f",
            "safs.algorithms": "from safs.search import list_optimizers as f",
            "safs.operators": "from safs.activations import list_operators as f",
            "safs.hpo_backends": "from safs.hpo.backends import list_backends as f"}[group]
    out = run_python(f"{read}\nf()\n", tmp_path)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == (f"safs.entry_points.PluginError: {kind} '{name}' is already registered: provided by safs (built-in) and by "
                    f"plugin clashing-plugin (fake_mod:Op); uninstall or rename one of them")


def test_two_plugins_cannot_take_one_name(tmp_path):
    fake_dist(tmp_path / "a", "plugin-a", "fake_mod", {"safs.operators": {"twice": "fake_mod:Op"}})
    fake_dist(tmp_path / "b", "plugin-b", "fake_mod2", {"safs.operators": {"twice": "fake_mod2:Op"}})
    out = run_python("from safs.activations import list_operators\nlist_operators()\n", tmp_path / "a", tmp_path / "b")
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and "'twice' is already registered" in last
    assert "plugin-a (fake_mod:Op)" in last and "plugin-b (fake_mod2:Op)" in last


def test_a_pipeline_never_names_a_module_path(tmp_path):
    raw = {"name": "p", "data": {"name": "digits"}, "model": {"name": "os:system"},
           "stages": [{"name": "dense", "kind": "train", "epochs": 1}]}
    with pytest.raises(ConfigError, match="unknown model 'os:system'"):
        safs.run(raw, tmp_path, dry_run=True)
    raw["model"] = {"name": "lenet5"}
    raw["data"] = {"name": "safs.data.embedded:load_digits"}
    with pytest.raises(ConfigError, match="unknown dataset"):
        safs.run(raw, tmp_path, dry_run=True)


@pytest.fixture
def isolated_registries(monkeypatch):
    """In-process registrations made by a test end with it."""
    import safs.data
    import safs.search
    import safs.sparsity
    from safs import plugins
    from safs.activations import OPERATORS
    from safs.models.registry import MODELS

    monkeypatch.setattr(MODELS, "_specs", dict(MODELS.specs))
    monkeypatch.setattr(safs.data, "REGISTRY", dict(safs.data.REGISTRY))
    monkeypatch.setattr(safs.data, "_LOADERS", dict(safs.data._LOADERS))
    monkeypatch.setattr(safs.sparsity, "_LOCAL", dict(safs.sparsity._LOCAL))
    monkeypatch.setattr(safs.search, "OPTIMIZERS", dict(safs.search.OPTIMIZERS))
    monkeypatch.setattr(OPERATORS, "registered", dict(OPERATORS.registered))
    monkeypatch.setattr(plugins, "_REGISTERED", [])


def test_in_process_registration_and_its_clashes(isolated_registries):
    from torch import nn

    from safs.activations import ActivationSlot, list_operators
    from safs.data import dataset_shape, list_datasets
    from safs.models import create_model, model_info
    from safs.plugins import PluginError, registered
    from safs.search import RandomSearch, list_optimizers
    from safs.sparsity import method_protocol
    from safs.sparsity.base import SparseMethod

    @safs.register_model("test_inproc_net", description="an in-process net")
    def build(num_classes, input_shape, activation):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), ActivationSlot(activation), nn.Linear(4, num_classes))

    @safs.register_dataset("test_inproc_data", num_classes=10, input_shape=(1, 8, 8))
    def load(data_dir=None, *, seed=0, val_fraction=None, test_fraction=None):
        return safs.load_dataset("digits", seed=seed)

    @safs.register_method("test_inproc_method")
    class Method(SparseMethod):
        name, control, protocol = "test_inproc_method", "exact", "one_shot"

    @safs.register_algorithm("test_inproc_algo")
    class Algo(RandomSearch):
        """in-process"""

    @safs.register_operator("test_inproc_op")
    class Op(nn.Module):
        def forward(self, x, alpha, beta):
            return alpha * beta * x

    assert "an in-process net" in model_info("test_inproc_net")
    assert type(create_model("test_inproc_net", 10, (1, 8, 8), "test_inproc_op")[2].op) is Op
    assert "test_inproc_data" in list_datasets() and dataset_shape("test_inproc_data") == (10, (1, 8, 8))
    assert method_protocol("test_inproc_method") == "one_shot"
    assert "test_inproc_algo" in list_optimizers() and "test_inproc_op" in list_operators()
    names = {(k, n) for k, n, _, _ in registered()}
    assert {("models", "test_inproc_net"), ("operators", "test_inproc_op")} <= names

    for register, name in [(safs.register_model, "lenet5"), (safs.register_dataset, "digits"),
                           (safs.register_method, "lwm"), (safs.register_algorithm, "lahc"),
                           (safs.register_operator, "relu")]:
        with pytest.raises(ValueError, match=f"'{name}' is already registered: provided by safs \\(built-in\\) and by "
                                             "in-process registration"):
            register(name)(Op)
    with pytest.raises(ValueError, match="'test_inproc_op' is already registered: provided by in-process registration "
                                         r"\(test_plugins.*Op\) and by in-process"):
        safs.register_operator("test_inproc_op")(build)

    class NoProtocol(SparseMethod):
        pass

    with pytest.raises(PluginError, match="must declare protocol"):
        safs.register_method("test_inproc_bad")(NoProtocol)


@pytest.mark.slow
def test_an_in_process_model_trains_on_ray(tmp_path, monkeypatch, isolated_registries):
    """A builder the driver registered, defined where no worker could import it (a local
    function: Ray ships it by value), builds the model of every trial."""
    import ray
    from torch import nn

    from safs.activations import ActivationSlot

    monkeypatch.chdir(tmp_path)

    @safs.register_model("test_ray_net", description="registered by the test's driver")
    def build(num_classes, input_shape, activation, *, width=16):
        c, h, w = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), ActivationSlot(activation),
                             nn.Linear(width, num_classes))

    raw = {"name": "inproc", "seed": 1, "data": {"name": "digits"},
           "model": {"name": "test_ray_net", "options": {"width": 12}},
           "sparsity": {"method": "lwm", "target": 0.5},
           "defaults": {"train": {"batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}}},
           "stages": [{"name": "dense", "kind": "train", "epochs": 2}, {"name": "prune", "kind": "prune"}]}
    was_up = ray.is_initialized()
    try:
        df = safs.run(raw, num_cpus=2, quiet=True, echo=lambda *_: None)
    finally:
        if not was_up:
            ray.shutdown()
    assert list(df.stage) == ["dense", "prune"] and set(df.status) == {"done"}
    assert df.set_index("stage").loc["dense", "val_acc"] > 0.2  # chance: 0.1
    model = safs.load_model(next((tmp_path / "results" / "inproc").glob("02-prune-*")))
    assert model[1].out_features == 12 and float((model[1].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_the_example_plugin_installs_and_runs_a_pipeline(tmp_path):
    """dense -> prune (the plugin's random pruning) -> activation search (a space with the
    plugin's operator) -> retrain, on the plugin's dataset and model."""
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, env=subprocess_env())
    env = subprocess_env(PYTHONPATH=f"{site}:{ROOT}")

    listed = subprocess.run([*safs_cmd(), "list", "models"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "tinymlp" in listed.stdout and "(plugin: safs-example-plugin)" in listed.stdout, listed.stderr

    run = subprocess.run([*safs_cmd(), "run", str(src / "pipeline.yaml"), "--results", str(tmp_path / "results"),
                          "--num-cpus", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    recs = records(tmp_path / "results" / "plugin-example")
    assert {r["status"] for r in recs.values()} == {"done"} and len(recs) == 4
    dense, pruned, search = (by_stage(recs, n) for n in ("dense", "prune", "search"))
    assert set(dense["genome"].values()) == {"softsign"}  # the plugin's operator as the model's activation
    assert (dense["row"]["model"], dense["row"]["dataset"], pruned["row"]["method"]) == \
        ("tinymlp", "blobs", "random_prune")
    assert pruned["row"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "softsign" in search["spec"]["stage"]["choices"] and search["search"]["candidates"] == 2
    assert by_stage(recs, "retrain")["row"]["test_acc"] > 0.4
