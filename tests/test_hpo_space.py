"""HPO search spaces: the built-in files load, defaults follow the stage's training settings
without ever becoming illegal, and every configuration maps to valid training settings."""

import copy

import ConfigSpace as CS
import pytest
import yaml

from safs.settings import TrainingSettings
from safs.models import list_models
from safs.hpo import space as H

ALL_SCHEDULES = ["halving", "cosine_warm_restarts", "constant", "cosine", "step", "linear_warmup", "plateau"]


def _valid_default(cs) -> CS.Configuration:
    default = cs.get_default_configuration()
    default.check_valid_configuration()
    return default


def test_builtin_spaces_load_and_resolve(tmp_path):
    assert H.list_spaces() == ["modern", "safs"]
    for name in H.list_spaces():
        assert H.resolve_space(name) == H.SPACES_DIR / f"{name}.yaml"
        cs = H.load_space(name)
        assert all(hp.meta["target"] in H.list_targets() for hp in cs.values())
        _valid_default(cs)
    (tmp_path / "mine.yaml").write_text((H.SPACES_DIR / "modern.yaml").read_text())
    assert H.resolve_space("mine.yaml", base_dir=tmp_path) == tmp_path / "mine.yaml"
    assert len(H.load_space(tmp_path / "mine.yaml")) == len(H.load_space("modern"))
    with pytest.raises(ValueError, match="unknown HPO space 'nope'; accepted: modern, safs"):
        H.resolve_space("nope")


def test_safs_space_is_the_original():
    cs = H.load_space("safs")
    assert list(cs["optim_name"].choices) == ["sgd", "adam", "tadam", "fromage"]
    assert list(cs["lr_scheduler"].choices) == ALL_SCHEDULES
    assert (cs["momentum"].lower, cs["momentum"].upper, cs["momentum"].log) == (0.1, 0.999, False)
    for label in ("SGD", "Adam", "TAdam", "Fromage"):
        lr = cs[f"lr_{label}"]
        assert (lr.lower, lr.upper, lr.log) == (1e-4, 1e-1, True)
    for label in ("SGD", "Adam", "TAdam"):
        wd = cs[f"wd_{label}"]
        assert (wd.lower, wd.upper, wd.log) == (1e-5, 1e-1, True)  # log by default
    assert "wd_Fromage" not in cs
    assert {c.parent.name for c in cs.conditions} == {"optim_name"}
    assert {c.child.name for c in cs.conditions if c.value == "sgd"} == {"lr_SGD", "wd_SGD", "momentum", "lr_scheduler"}


def test_linear_weight_decay_option():
    cs = H.load_space("safs", options={"linear_weight_decay": True})
    for label in ("SGD", "Adam", "TAdam"):
        wd = cs[f"wd_{label}"]
        assert (wd.lower, wd.upper, wd.log) == (1e-5, 1e-1, False)
    assert cs["lr_SGD"].log  # only weight decay changes
    cs.seed(0)
    samples = [c["wd_SGD"] for c in cs.sample_configuration(300) if "wd_SGD" in c]
    assert sum(s > 0.01 for s in samples) / len(samples) > 0.8  # uniform: most samples above 0.01
    with pytest.raises(ValueError, match="unknown option.*linear_wd; accepted: linear_weight_decay"):
        H.load_space("safs", options={"linear_wd": True})


@pytest.mark.parametrize("key", sorted(H.PAPER_DEFAULTS))
def test_paper_defaults_become_the_default_configuration(key):
    settings = H.paper_settings(key)
    cs = H.with_defaults(H.load_space("safs"), settings)
    default = _valid_default(cs)
    out = H.to_training_settings(settings, default)
    TrainingSettings(**out)
    for field in ("name", "lr", "weight_decay"):
        assert out["optimizer"][field] == pytest.approx(settings["optimizer"][field]), field
    assert out["schedule"]["name"] == settings["schedule"]["name"]
    if settings["optimizer"]["name"] == "sgd":
        assert out["optimizer"]["momentum"] == pytest.approx(0.9)


def test_lenet5_keeps_adam_and_its_lr():
    # The original's bug: LeNet-5's default scheduler name was not among the choices, so SMAC refused to start.
    cs = H.with_defaults(H.load_space("safs"), H.paper_settings("lenet5/mnist"))
    default = dict(_valid_default(cs))
    assert default["optim_name"] == "adam"
    assert default["lr_Adam"] == pytest.approx(1e-3) and default["wd_Adam"] == pytest.approx(5e-4)
    assert "lr_scheduler" not in default and "momentum" not in default
    assert cs["lr_scheduler"].default_value == "constant"  # inactive: the file's default stays


@pytest.mark.parametrize("model", list_models())
@pytest.mark.parametrize("space", ["safs", "modern"])
def test_every_model_gets_a_valid_default(model, space):
    papers = [k for k in H.PAPER_DEFAULTS if k.split("/")[0] == model]
    candidates = [H.paper_settings(k) for k in papers] + [TrainingSettings().model_dump()]
    for settings in candidates:
        cs = H.with_defaults(H.load_space(space), settings)
        TrainingSettings(**H.to_training_settings(settings, _valid_default(cs)))


def test_illegal_settings_keep_the_files_defaults():
    cs = H.load_space("safs")
    generic = TrainingSettings().model_dump()  # sgd, lr 0.01, weight decay 0 (below the range)
    default = dict(_valid_default(H.with_defaults(cs, generic)))
    assert default["lr_SGD"] == pytest.approx(0.01) and default["wd_SGD"] == cs["wd_SGD"].default_value
    odd = copy.deepcopy(generic)
    odd["optimizer"].update(name="adamw", lr=5.0)  # not a choice; out of range
    odd["schedule"]["name"] = "cosine"
    default = dict(_valid_default(H.with_defaults(cs, odd)))
    assert default["optim_name"] == "sgd" and default["lr_SGD"] == cs["lr_SGD"].default_value
    assert default["lr_scheduler"] == "cosine"
    modern = H.with_defaults(H.load_space("modern"), {**odd, "batch_size": 100, "label_smoothing": 0.1})
    default = dict(_valid_default(modern))
    assert default["optimizer"] == "adamw" and default["batch_size"] == 128
    assert default["label_smoothing"] == pytest.approx(0.1)
    assert cs["optim_name"].default_value == "sgd"  # the input space is left alone


def _samples(name, n=200, **options):
    cs = H.load_space(name, options=options or None)
    cs.seed(1)
    return cs, cs.sample_configuration(n)


def test_safs_configurations_map_to_valid_settings():
    cs, configs = _samples("safs")
    base = H.paper_settings("vgg16/cifar10")
    base["schedule"]["warmup_epochs"] = 3  # overridden by every schedule of this space
    seen = set()
    for config in configs:
        c = dict(config)
        out = H.to_training_settings(base, config)
        TrainingSettings(**out)
        opt, sched = out["optimizer"], out["schedule"]
        label = {"sgd": "SGD", "adam": "Adam", "tadam": "TAdam", "fromage": "Fromage"}[c["optim_name"]]
        assert opt["name"] == c["optim_name"] and opt["lr"] == pytest.approx(c[f"lr_{label}"])
        if c["optim_name"] == "sgd":
            assert opt["momentum"] == pytest.approx(c["momentum"]) and opt["weight_decay"] == pytest.approx(c["wd_SGD"])
            assert sched["name"] == c["lr_scheduler"] and not opt["nesterov"]
        else:
            assert "momentum" not in c and "lr_scheduler" not in c
            assert sched["name"] == "constant" and sched["warmup_epochs"] == 0
        if c["optim_name"] in ("adam", "tadam"):
            assert opt["betas"] == (0.9, 0.99)
        if c["optim_name"] == "fromage":
            assert opt["weight_decay"] == 0.0
        assert sched["warmup_epochs"] == (5 if sched["name"] == "linear_warmup" else 0)
        if sched["name"] == "cosine_warm_restarts":
            assert (sched["eta_min"], sched["t0"]) == (5e-5, None)
        elif sched["name"] == "step":
            assert (sched["step_size"], sched["gamma"]) == (None, 0.1)
        elif sched["name"] == "plateau":
            assert (sched["gamma"], sched["patience"]) == (0.05, 2)
        elif sched["name"] == "linear_warmup":
            assert sched["warmup_start_factor"] == 0.1
        seen.add((opt["name"], sched["name"]))
    assert {o for o, _ in seen} == {"sgd", "adam", "tadam", "fromage"}
    assert {s for o, s in seen if o == "sgd"} == set(ALL_SCHEDULES)


def test_modern_configurations_map_to_valid_settings():
    cs, configs = _samples("modern")
    base = TrainingSettings().model_dump()
    for config in configs:
        c = dict(config)
        out = H.to_training_settings(base, config)
        TrainingSettings(**out)
        opt = out["optimizer"]
        assert opt["name"] in ("adamw", "sgd") and 1e-4 <= opt["lr"] <= 0.1 and 1e-6 <= opt["weight_decay"] <= 0.1
        assert opt["lr"] == pytest.approx(c[f"lr_{opt['name']}"])
        if opt["name"] == "sgd":
            assert opt["nesterov"] and opt["momentum"] == 0.9
        assert out["schedule"]["name"] == "cosine" and out["schedule"]["warmup_epochs"] == c["warmup_epochs"]
        assert 0 <= out["schedule"]["warmup_epochs"] <= 5 and 0 <= out["label_smoothing"] <= 0.2
        assert out["batch_size"] in (64, 128, 256)


def test_sampled_settings_build_optimizers_and_schedulers():
    import torch

    from safs.settings import OptimizerConfig, ScheduleConfig
    from safs.training.optim import make_optimizer, make_scheduler

    done = set()
    for name in ("safs", "modern"):
        cs, configs = _samples(name, 100)
        for config in configs:
            out = H.to_training_settings(TrainingSettings().model_dump(), config)
            key = (out["optimizer"]["name"], out["schedule"]["name"])
            if key in done:
                continue
            done.add(key)
            opt = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], OptimizerConfig(**out["optimizer"]))
            make_scheduler(opt, ScheduleConfig(**out["schedule"]), 8)
    assert len(done) >= 10


def test_to_training_settings_inputs():
    cs = H.load_space("safs")
    stage = {**TrainingSettings().model_dump(), "kind": "train", "name": "s", "epochs": 4}
    config = {"optim_name": "adam", "lr_Adam": 0.02, "wd_Adam": 1e-3, "budget": 7}
    out = H.to_training_settings(stage, config, cs)  # a plain dict needs its space
    assert out["optimizer"]["lr"] == 0.02 and out["epochs"] == 4 and "budget" not in out
    assert stage["optimizer"]["name"] == "sgd"  # not modified
    with pytest.raises(TypeError, match="pass the configuration space"):
        H.to_training_settings(stage, config)
    # a Configuration carries its space; numpy values come back as Python values
    conf = CS.Configuration(cs, values={"optim_name": "sgd", "lr_SGD": 0.05, "momentum": 0.5, "wd_SGD": 1e-4,
                                        "lr_scheduler": "step"})
    out = H.to_training_settings(stage, conf)
    assert type(out["optimizer"]["lr"]) is float and out["schedule"]["step_size"] is None
    with pytest.raises(ValueError, match="both set optimizer.lr"):
        H.to_training_settings(stage, {"optim_name": "adam", "lr_Adam": 0.02, "lr_SGD": 0.03}, cs)


def test_a_searched_value_overrides_an_implied_one(tmp_path):
    cs = CS.ConfigurationSpace(name="t")
    sched = CS.Categorical("s", ["cosine_warm_restarts", "cosine"], meta={
        "target": "schedule.name", "implies": {"cosine_warm_restarts": {"schedule.eta_min": 5e-5, "schedule.t0": 2}}})
    eta = CS.Float("eta", (1e-6, 1e-3), log=True, default=1e-4, meta={"target": "schedule.eta_min"})
    cs.add([sched, eta])
    cs.to_yaml(tmp_path / "t.yaml")
    cs = H.load_space(tmp_path / "t.yaml")
    out = H.to_training_settings(TrainingSettings().model_dump(), cs.get_default_configuration())
    assert out["schedule"]["eta_min"] == pytest.approx(1e-4) and out["schedule"]["t0"] == 2


# --------------------------------------------------------------------------- bad files

def _bad_file(tmp_path, edit) -> str:
    raw = yaml.safe_load((H.SPACES_DIR / "safs.yaml").read_text())
    hps = {h["name"]: h for h in raw["hyperparameters"]}
    edit(hps)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as err:
        H.load_space(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("bad.yaml: ")
    return msg


def test_missing_target(tmp_path):
    msg = _bad_file(tmp_path, lambda h: h["momentum"]["meta"].pop("target"))
    assert "'momentum'" in msg and "meta.target is missing" in msg and "optimizer.momentum" in msg
    msg = _bad_file(tmp_path, lambda h: h["momentum"].update(meta=None))
    assert "'momentum'" in msg and "meta.target is missing" in msg


def test_unknown_target(tmp_path):
    msg = _bad_file(tmp_path, lambda h: h["lr_SGD"]["meta"].update(target="optimizer.lrate"))
    assert "'lr_SGD'" in msg and "unknown meta.target 'optimizer.lrate'" in msg and "optimizer.lr," in msg


def test_unknown_optimizer_and_schedule_names(tmp_path):
    msg = _bad_file(tmp_path, lambda h: h["optim_name"]["choices"].append("lion"))
    assert "'optim_name'" in msg and "'lion'" in msg and "accepted: sgd, adam, adamw, tadam, fromage" in msg
    msg = _bad_file(tmp_path, lambda h: h["lr_scheduler"].update(
        choices=["halving", "VGG_lr_scheduler"], default_value="halving"))
    assert "'lr_scheduler'" in msg and "'VGG_lr_scheduler'" in msg and "linear_warmup" in msg


def test_bad_ranges_and_implies(tmp_path):
    msg = _bad_file(tmp_path, lambda h: h["momentum"].update(upper=1.5))
    assert "'momentum'" in msg and "1.5" in msg and "optimizer.momentum" in msg
    msg = _bad_file(tmp_path, lambda h: h["lr_scheduler"]["meta"]["implies"]["plateau"].update(
        {"schedule.factor": 0.05}))
    assert "'lr_scheduler'" in msg and "unknown target 'schedule.factor'" in msg
    msg = _bad_file(tmp_path, lambda h: h["lr_scheduler"]["meta"]["implies"].update({"onecycle": {}}))
    assert "'lr_scheduler'" in msg and "'onecycle'" in msg and "accepted: halving" in msg
    msg = _bad_file(tmp_path, lambda h: h["momentum"]["meta"].update(note="x"))
    assert "'momentum'" in msg and "unknown meta key" in msg


def test_not_a_configspace_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("hello: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not a ConfigSpace YAML file") as err:
        H.load_space(path)
    assert "\n" not in str(err.value)
