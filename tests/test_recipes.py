"""The image policies (AutoAugment, RandAugment) and knowledge distillation from a teacher stage,
on tiny data on the CPU (``fit`` outside Ray, conftest's run_fit; one pipeline through Ray, slow)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import FIT_PIPELINE as PIPELINE, run_fit, stage_spec


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def _policy(kind: str, **options):
    from safs.training.recipes import make_policy

    return make_policy({kind: options})


@pytest.mark.parametrize("kind, options", [("autoaugment", {"policy": "imagenet"}),
                                           ("autoaugment", {"policy": "cifar10"}),
                                           ("randaugment", {"num_ops": 2, "magnitude": 9})])
def test_a_policy_changes_images_is_seeded_and_keeps_shape_and_dtype(kind, options):
    torch.manual_seed(1)
    x = torch.rand(16, 3, 12, 12)
    policy = _policy(kind, **options)
    torch.manual_seed(0)
    a = policy(x.clone())
    torch.manual_seed(0)
    b = policy(x.clone())
    torch.manual_seed(1)
    c = policy(x.clone())
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)  # the same seed draws the same
    assert not torch.equal(a, c)
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() >= 0.5  # most samples get an op that changes them
    assert a.min() >= 0 and a.max() <= 1


def test_each_sample_draws_its_own_ops_unless_told_to_share():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 12, 12).expand(32, 3, 12, 12).clone()  # one image, 32 times
    torch.manual_seed(0)
    own = _policy("randaugment", num_ops=2, magnitude=15)(x)
    torch.manual_seed(0)
    shared = _policy("randaugment", num_ops=2, magnitude=15, samples_per_draw=32)(x)
    assert len({tuple(s.flatten().tolist()) for s in own}) > 4
    assert all(torch.equal(s, shared[0]) for s in shared)


def test_a_policy_works_in_pixels_and_hands_back_the_normalisation():
    from safs.training.recipes import ImagePolicy

    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    pixels = torch.rand(4, 3, 8, 8)
    x = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    seen = []
    identity = ImagePolicy(lambda t: seen.append(t.clone()) or t, mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1))
    out = identity(x)
    assert torch.allclose(torch.cat(seen), pixels, atol=1e-6)  # the ops see pixels in [0, 1]
    assert torch.allclose(out, x, atol=1e-5)
    # Through make_policy: a dataset's per-channel statistics broadcast over the batch.
    from types import SimpleNamespace

    from safs.training.recipes import make_policy

    p = make_policy({"autoaugment": {"policy": "imagenet"}}, SimpleNamespace(mean=mean, std=std))
    assert p.mean.shape == (1, 3, 1, 1) and p(x).shape == x.shape


def test_a_resumed_epoch_draws_the_same_policy_ops(tmp_path):
    from safs.stages.common import seed_trial
    from safs.training.recipes import make_recipe

    spec = stage_spec(tmp_path, ", randaugment: {num_ops: 2, magnitude: 9}")
    recipe = make_recipe(spec["stage"])
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    draws = []
    for _ in range(2):  # the uninterrupted epoch 3, then the same epoch after a resume
        seed_trial(spec, None, 3)
        draws.append(recipe(x, y)[0])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], x)


@pytest.mark.parametrize("extra", [", autoaugment: {policy: imagenet}",
                                   ", randaugment: {num_ops: 1, magnitude: 5}, mixup: {alpha: 0.2}"])
def test_a_fit_trains_with_a_policy(tmp_path, monkeypatch, extra):
    _, history = run_fit(monkeypatch, stage_spec(tmp_path, extra), 2)
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["val_acc"] > 0.2  # ten classes: better than chance


@pytest.mark.parametrize("extra, field, accepted", [
    (", autoaugment: {policy: mnist}", "autoaugment.policy", "imagenet"),
    (", randaugment: {magnitude: 31}", "randaugment.magnitude", "30"),
    (", randaugment: {num_ops: 0}", "randaugment.num_ops", "1"),
    (", autoaugment: {samples_per_draw: 0}", "autoaugment.samples_per_draw", "1"),
    (", autoaugment: {}, randaugment: {}", "autoaugment", "not both")])
def test_the_policies_are_validated(extra, field, accepted):
    from safs.config import ConfigError, parse_pipeline

    with pytest.raises(ConfigError) as e:
        parse_pipeline(yaml.safe_load(PIPELINE.format(extra=extra)))
    msg = str(e.value)
    assert field in msg and accepted in msg and "\n" not in msg.strip()


def test_policies_are_hashed_only_when_set(tmp_path):
    base = stage_spec(tmp_path)["hash"]
    hashes = {stage_spec(tmp_path, extra)["hash"] for extra in (
        ", autoaugment: {policy: imagenet}", ", autoaugment: {policy: cifar10}", ", randaugment: {magnitude: 9}")}
    assert len(hashes) == 3 and base not in hashes


# ----------------------------------------------------------------------------- distillation

def test_the_distillation_loss_on_a_tiny_example():
    from safs.training.recipes import distill_loss

    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    hard = torch.tensor(0.7)
    alpha, t = 0.25, 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax(t_row), softmax(s_row)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = (1 - alpha) * 0.7 + alpha * t * t * kl / 2  # KL averaged over the batch
    assert distill_loss(student, teacher, hard, alpha, t).item() == pytest.approx(expected, rel=1e-6)
    assert distill_loss(student, teacher, hard, 0.0, t).item() == pytest.approx(0.7)
    assert distill_loss(student, student, hard, 1.0, t).item() == pytest.approx(0.0, abs=1e-7)


def test_the_teacher_is_frozen_in_eval_mode():
    from torch import nn

    from safs.training.recipes import Distiller

    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    student = nn.Linear(4, 3)
    d = Distiller(teacher, 1.0, 2.0)
    stats = teacher[1].running_mean.clone()
    x = torch.randn(16, 4)
    loss = d.loss(student(x), x, torch.tensor(0.0))
    loss.backward()
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher[1].running_mean, stats)  # eval mode: BN statistics untouched
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    a, b = d.loss(student(x), x, torch.tensor(0.0)), d.loss(student(x), x, torch.tensor(0.0))
    assert torch.equal(a, b)  # no dropout in the teacher


DISTILL = """
name: distill
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
resources: {{cpus_per_trial: 1}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: teacher, kind: train, epochs: {teacher_epochs}}}
  - {{name: student, kind: train, epochs: 2, from_scratch: true, distill: {distill}}}
"""


def distill_plans(tmp_path, teacher_epochs: int = 2, distill: str = "{teacher: teacher, alpha: 0.5, temperature: 2.0}"):
    from safs.config import parse_pipeline
    from safs.plan import plan

    cfg = parse_pipeline(yaml.safe_load(DISTILL.format(teacher_epochs=teacher_epochs, distill=distill)))
    return plan(cfg, tmp_path)


def test_the_teacher_is_part_of_the_student_stage(tmp_path):
    from safs import runner

    plans = distill_plans(tmp_path)
    teacher, student = plans
    assert student.input_index is None  # from scratch
    assert runner._dependencies(student, plans) == [teacher]
    # Another teacher (its epochs) is another student; the same teacher under another name is not.
    assert distill_plans(tmp_path, teacher_epochs=3)[1].hash != student.hash
    assert distill_plans(tmp_path, distill="{teacher: teacher, alpha: 0.6, temperature: 2.0}")[1].hash != student.hash
    renamed = DISTILL.replace("name: teacher,", "name: big,").format(
        teacher_epochs=2, distill="{teacher: big, alpha: 0.5, temperature: 2.0}")
    from safs.config import parse_pipeline
    from safs.plan import plan

    assert plan(parse_pipeline(yaml.safe_load(renamed)), tmp_path)[1].hash == student.hash
    # Without distill (or from_scratch) the hashes of existing pipelines stay as they were.
    plain = DISTILL.replace(", from_scratch: true, distill: {distill}", "").format(teacher_epochs=2, distill="")
    explicit = DISTILL.replace(", from_scratch: true, distill: {distill}", ", from_scratch: false").format(
        teacher_epochs=2, distill="")
    assert plan(parse_pipeline(yaml.safe_load(plain)), tmp_path)[1].hash == \
        plan(parse_pipeline(yaml.safe_load(explicit)), tmp_path)[1].hash


@pytest.mark.parametrize("distill, field, message", [
    ("{teacher: nobody}", "stages[1].distill.teacher", "'nobody' is not an earlier stage; accepted: teacher"),
    ("{teacher: student}", "stages[1].distill.teacher", "'student' is not an earlier stage; accepted: teacher"),
    ("{alpha: 0.5}", "stages[1].distill.teacher", "required"),
    ("{teacher: teacher, alpha: 1.5}", "stages[1].distill.alpha", "less than or equal to 1"),
    ("{teacher: teacher, temperature: 0}", "stages[1].distill.temperature", "greater than 0"),
    ("{teacher: teacher, beta: 1}", "stages[1].distill.beta", "accepted keys: teacher, alpha, temperature")])
def test_distillation_config_errors(distill, field, message):
    from safs.config import ConfigError

    with pytest.raises(ConfigError) as e:
        distill_plans("unused", distill=distill)
    msg = str(e.value)
    assert f"{field}: " in msg and message in msg and "\n" not in msg


def test_a_later_teacher_is_refused():
    from safs.config import ConfigError, parse_pipeline

    raw = yaml.safe_load(DISTILL.format(teacher_epochs=1, distill="{teacher: teacher}"))
    raw["stages"][0]["distill"] = {"teacher": "student"}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.distill\.teacher: 'student' is not an earlier stage"):
        parse_pipeline(raw)
    raw = yaml.safe_load(DISTILL.format(teacher_epochs=1, distill="{teacher: teacher}"))
    raw["stages"][1]["input"] = "teacher"
    with pytest.raises(ConfigError, match=r"stages\[1\]\.from_scratch: give either input or from_scratch"):
        parse_pipeline(raw)


def test_a_student_trains_with_its_teacher(tmp_path, monkeypatch):
    from safs import model_file
    from safs.stages import common

    teacher_plan, student_plan = distill_plans(tmp_path)
    _, teacher_history = run_fit(monkeypatch, teacher_plan.spec, 2)
    ds = common.dataset(teacher_plan.spec, torch.device("cpu"))
    teacher = model_file.new_model(teacher_plan.spec, ds)
    # A teacher file as the runner hands it over (here: an untrained network, so that the
    # soft targets differ from the labels and must change the loss).
    path = tmp_path / "teacher.pt"
    model_file.save_model(path, teacher, model_file.model_meta(teacher_plan.spec, ds), None)
    spec = dict(student_plan.spec, teacher=str(path))
    _, distilled = run_fit(monkeypatch, spec, 2)
    assert all(math.isfinite(h["train_loss"]) for h in distilled)
    plain_stage = dict(spec["stage"], distill=None)
    _, plain = run_fit(monkeypatch, dict(spec, stage=plain_stage), 2)
    assert distilled[0]["train_loss"] != pytest.approx(plain[0]["train_loss"], rel=1e-3)
    spec_alpha0 = dict(spec, stage=dict(spec["stage"], distill={**spec["stage"]["distill"], "alpha": 0.0}))
    _, alpha0 = run_fit(monkeypatch, spec_alpha0, 2)
    assert alpha0[0]["train_loss"] == pytest.approx(plain[0]["train_loss"], rel=1e-5)  # CE only


@pytest.mark.slow
def test_a_pipeline_with_a_teacher_runs_and_records_it(tmp_path, ray_session):
    from safs import runner
    from safs.config import parse_pipeline
    from conftest import by_stage, records

    cfg = parse_pipeline(yaml.safe_load(DISTILL.format(teacher_epochs=2, distill="{teacher: teacher, alpha: 0.5}")))
    runner.run(cfg, tmp_path, quiet=True, echo=lambda _: None)
    recs = records(tmp_path / "distill")
    teacher, student = by_stage(recs, "teacher"), by_stage(recs, "student")
    assert teacher["status"] == student["status"] == "done"
    assert student["teacher_sha256"] == teacher["model_sha256"]
    assert student["spec"]["teacher"].endswith("model.pt") and student["input_sha256"] is None
    assert student["row"]["val_acc"] > 0.3
    lines: list[str] = []
    runner.run(cfg, tmp_path, quiet=True, echo=lines.append)
    assert all("cached" in line for line in lines)
