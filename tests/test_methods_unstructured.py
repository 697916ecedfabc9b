"""The unstructured training-time methods: gmp, str, st3, st3_sigma, dnw.

Unit tests train a LeNet-5 (28x28 input) for a handful of steps on fixed random batches (one
CPU thread: the machine is shared). The slow tests run one real pipeline per method on
digits (sparse training -> activation search -> final)."""

import io
import shutil
import subprocess
import tempfile

import pytest
import torch
from torch import nn

from conftest import lenet, method_sgd, method_step, random_batches, train_with_method
from safs.sparsity import create_method
from safs.sparsity.masks import MASK, masked_layers
from safs.training.measure import measure

EXACT = ["gmp", "st3", "st3_sigma", "dnw"]
ALL = EXACT + ["str"]
SHAPE = (1, 28, 28)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def zeros_of(model):
    """Fraction of zero weights over every conv/linear layer (all are owned by these methods)."""
    return measure(model, SHAPE).sparsity


def attached_sparsity(model):
    """Sparsity of the weights the attached model computes with."""
    zeros = total = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.effective_weight() if hasattr(m, "effective_weight") else m.weight
                zeros += int((w == 0).sum())
                total += w.numel()
    return zeros / total


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("name", ALL)
def test_unknown_options_name_themselves_and_the_accepted_ones(name):
    with pytest.raises(ValueError, match=r"sparsity.options: unknown option\(s\) bogus .*accepted"):
        create_method(name, 0.5, {"bogus": 1})
    create_method(name, 0.5, {})  # defaults are valid


@pytest.mark.parametrize("name, options", [("gmp", {"start": 0.6, "end": 0.5}), ("gmp", {"frequency": 0}),
                                           ("gmp", {"initial_sparsity": 0.9}), ("st3", {"end": 1.5}),
                                           ("st3_sigma", {"fix_at": 0.2}), ("str", {"weight_decay": -1.0})])
def test_bad_option_values_are_rejected(name, options):
    with pytest.raises(ValueError, match="sparsity.options"):
        create_method(name, 0.5, options)


# --------------------------------------------------------------------------- exact targets

@pytest.mark.parametrize("name", EXACT)
def test_exact_methods_reach_the_target_after_training_and_finalize(name):
    target = 0.9
    model = lenet()
    method = create_method(name, target)
    model = method.attach(model)
    train_with_method(model, method, random_batches(6), epochs=2)
    assert attached_sparsity(model) == pytest.approx(target, abs=0.005)
    final = method.finalize(model)
    assert zeros_of(final) == pytest.approx(target, abs=0.005)
    layers = masked_layers(final)
    assert set(layers) == {"conv1", "conv2", "fc1", "fc2", "fc3"}  # first conv and classifier too
    if name in ("gmp", "dnw"):  # per layer: exactly round(r * n) pruned
        for n, m in layers.items():
            assert int((m.weight == 0).sum()) == round(target * m.weight.numel()), n


def test_st3_sigma_prunes_more_uniformly_than_st3():
    spread = {}
    for name in ("st3", "st3_sigma"):
        model = lenet()
        method = create_method(name, 0.9)
        method.attach(model)
        method.prune(model)
        per_layer = [float((m.weight == 0).float().mean()) for m in masked_layers(method.finalize(model)).values()]
        spread[name] = max(per_layer) - min(per_layer)
    assert spread["st3_sigma"] < spread["st3"]


# --------------------------------------------------------------------------- schedules

def test_gmp_follows_the_cubic_schedule_step_by_step():
    s_i, s_f, spe, epochs = 0.1, 0.8, 6, 4  # T = 24 steps
    options = {"initial_sparsity": s_i, "start": 0.25, "end": 0.75, "frequency": 4}
    t0, dt, n = 6, 4, 3  # round(0.25*24); the span 12 holds 3 updates of 4 steps
    model = lenet()
    method = create_method("gmp", s_f, options)
    model = method.attach(model)
    seen = []

    def check():
        t = method.step
        if t < t0:
            expected = s_i
        else:
            tk = t0 + dt * min(n, (t - t0) // dt)  # the latest pruning step
            expected = s_f + (s_i - s_f) * (1 - (tk - t0) / (n * dt)) ** 3
        assert method.current_sparsity == pytest.approx(expected, abs=1e-12), t
        for name, m in masked_layers(model).items():
            pruned = int((~getattr(m, MASK)).sum())
            assert pruned == round(method.current_sparsity * m.weight.numel()), (t, name)
            assert torch.all(m.weight[~getattr(m, MASK)] == 0)
        seen.append(method.current_sparsity)

    train_with_method(model, method, random_batches(spe), epochs=epochs, on_step=check)
    assert seen[0] == s_i and seen[-1] == s_f and len(set(seen)) == n + 1  # s_i, 3 updates
    assert seen == sorted(seen)


@pytest.mark.parametrize("name", ["st3", "st3_sigma"])
def test_st3_follows_the_cubic_schedule_step_by_step(name):
    target, spe, epochs = 0.8, 5, 4  # T = 20 steps
    method = create_method(name, target, {"start": 0.1, "end": 0.6})
    t0, t1 = 2, 12
    model = lenet()
    model = method.attach(model)
    numel = sum(m.weight.numel() for m in masked_layers(model).values())
    fixed_weights = {}

    def check():
        t = method.step
        q = 0.0 if t < t0 else target if t >= t1 else target * (1 - (1 - (t - t0) / (t1 - t0)) ** 3)
        assert method.current_target == pytest.approx(q, abs=1e-12), t
        pruned = sum(int((~getattr(m, MASK)).sum()) for m in masked_layers(model).values())
        assert pruned == round(q * numel), t
        assert attached_sparsity(model) == pytest.approx(round(q * numel) / numel, abs=1e-4)
        assert method.fixed == (t >= t1)
        if method.fixed:  # fixed masks: the same zeros from the end of the schedule on
            zeros = {n: getattr(m, MASK).clone() for n, m in masked_layers(model).items()}
            fixed_weights.setdefault("masks", zeros)
            for n, m in masked_layers(model).items():
                assert torch.equal(zeros[n], fixed_weights["masks"][n])
                assert torch.all(m.weight[~zeros[n]] == 0)  # W := Ŵ in storage

    train_with_method(model, method, random_batches(spe), epochs=epochs, on_step=check)
    assert fixed_weights


def test_st3_masks_swap_while_the_target_is_constant_with_fix_at_one():
    method = create_method("st3", 0.7, {"start": 0.0, "end": 0.25, "fix_at": 1.0})
    model = method.attach(lenet())
    masks = []
    train_with_method(model, method, random_batches(8), epochs=2, opt=None,
          on_step=lambda: masks.append(torch.cat([getattr(m, MASK).flatten() for m in masked_layers(model).values()])))
    assert method.fixed and method.step == 16  # fixed at the end of the stage
    after = masks[4:]  # from the end of the schedule on: constant count, changing set
    assert len({int((~m).sum()) for m in after}) == 1
    assert any(not torch.equal(after[0], m) for m in after[1:])


def test_dnw_straight_through_reaches_pruned_weights_and_they_can_swap_in():
    model = lenet()
    method = create_method("dnw", 0.9)
    model = method.attach(model)
    fc1 = model.fc1
    with torch.no_grad():
        before = fc1.effective_weight() != 0
    x, y = random_batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    assert fc1.weight.grad[~before].abs().sum() > 0  # the dense weights keep learning
    train_with_method(model, method, random_batches(8), epochs=3, opt=method_sgd(model, method, lr=0.5))
    with torch.no_grad():
        after = fc1.effective_weight() != 0
    assert int(after.sum()) == int(before.sum())  # exact count
    assert not torch.equal(after, before)  # the wiring changed


# --------------------------------------------------------------------------- STR

def str_sparsity(s_init, weight_decay, steps=8):
    model = lenet()
    method = create_method("str", 0.0, {"mode": "free", "s_init": s_init, "weight_decay": weight_decay})
    model = method.attach(model)
    opt = method_sgd(model, method, lr=0.1, weight_decay=0.0)
    train_with_method(model, method, random_batches(steps), opt=opt)
    return zeros_of(method.finalize(model)), method


def test_str_thresholds_are_in_the_optimizer_with_their_weight_decay():
    model = lenet()
    method = create_method("str", 0.0, {"weight_decay": 0.123})
    model = method.attach(model)
    s = list(method.thresholds(model).values())
    assert len(s) == 5 and all(p.dtype == torch.float32 and p.requires_grad for p in s)
    groups = method.param_groups(model, [{"params": list(model.parameters()), "weight_decay": 0.5}])
    assert [id(p) for p in groups[-1]["params"]] == [id(p) for p in s] and groups[-1]["weight_decay"] == 0.123
    assert not {id(p) for p in s} & {id(p) for g in groups[:-1] for p in g["params"]}
    default = create_method("str", 0.0, {"weight_decay": None})
    m2 = default.attach(lenet())
    assert "weight_decay" not in default.param_groups(m2, [{"params": list(m2.parameters())}])[-1]


def test_str_sparsity_grows_with_s_init_and_with_weight_decay_on_s():
    by_init = [str_sparsity(s, 0.0)[0] for s in (-6.0, -4.0, -3.0)]
    assert by_init[0] < by_init[1] < by_init[2] < 1, by_init
    by_decay = [str_sparsity(-4.0, wd)[0] for wd in (0.0, 0.02, 0.06)]
    assert by_decay[0] < by_decay[1] < by_decay[2] < 1, by_decay


def test_str_exports_the_shrunk_weights():
    sparsity, method = str_sparsity(-3.0, 0.0)
    assert 0.2 < sparsity < 1
    model = lenet()
    method = create_method("str", 0.0, {"s_init": -2.0})
    model = method.attach(model)
    w, s = model.fc1.weight.detach().clone(), float(model.fc1.sparse_threshold.detach())
    final = method.finalize(model)
    expected = torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(torch.tensor(s)))
    assert torch.equal(final.fc1.weight, expected)  # shrunk, not W * mask
    assert torch.equal(final.fc1.weight_mask, expected != 0)
    assert "fc1.sparse_threshold" in model.state_dict() and "fc1.sparse_threshold" not in final.state_dict()


# --------------------------------------------------------------------------- finalize contract

def meta():
    return {"name": "lenet5", "activation": None, "options": {}, "num_classes": 10, "input_shape": list(SHAPE)}


@pytest.mark.parametrize("name", ALL)
def test_finalize_round_trips_through_save_and_load_model(name, tmp_path):
    from safs.model_file import load_model, save_model

    options = {"s_init": -3.0} if name == "str" else {}
    model = method_model = lenet()
    plain_keys = set(model.state_dict())
    method = create_method(name, 0.8, options)
    method_model = method.attach(model)
    train_with_method(method_model, method, random_batches(6), epochs=2)
    x = random_batches(1, size=16, seed=7)[0][0]
    expected = logits(method_model, x)
    final = method.finalize(method_model)
    assert torch.equal(logits(method_model, x), expected)  # the attached model is left alone
    for m in final.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert type(m) in (nn.Conv2d, nn.Linear)
            assert m.weight_mask.dtype == torch.bool and torch.all(m.weight[~m.weight_mask] == 0)
    masks = {f"{n}.{MASK}" for n in masked_layers(final)}
    assert set(final.state_dict()) == plain_keys | masks
    save_model(tmp_path / "model.pt", final, meta(), name)
    loaded, blob = load_model(tmp_path / "model.pt")  # torch.load(weights_only=True)
    assert blob["method"] == name
    assert torch.allclose(logits(loaded, x), expected, atol=1e-5, rtol=0)
    assert measure(loaded, SHAPE).sparsity == measure(final, SHAPE).sparsity
    if name != "str":
        assert measure(loaded, SHAPE).sparsity == pytest.approx(0.8, abs=0.005)


@pytest.mark.parametrize("name", ALL)
def test_direct_prune_attach_prune_finalize(name):
    """prune() for direct use: the pipeline runs no prune stage for these (during-training)
    methods, but a caller may still prune an attached model one-shot."""
    model = lenet()
    method = create_method(name, 0.75)
    model = method.attach(model)
    x = random_batches(1, size=4)[0][0]
    unpruned = method.finalize(model).state_dict()
    method.prune(model, 0.6)  # a target of its own
    expected = logits(model, x)
    final = method.finalize(model)
    assert torch.allclose(logits(final, x), expected, atol=1e-5, rtol=0)
    if name == "str":  # indirect: nothing to prune one-shot
        assert all(torch.equal(v, unpruned[k]) for k, v in final.state_dict().items())
    else:
        assert zeros_of(final) == pytest.approx(0.6, abs=0.005)


@pytest.mark.parametrize("name", ALL)
def test_a_sparse_input_model_keeps_its_sparsity_in_a_later_stage(name, tmp_path):
    """What an activation search or final stage does with the finalized model of a stage before."""
    from safs.model_file import load_model, save_model

    first = create_method(name, 0.8, {"s_init": -3.0} if name == "str" else {})
    model = first.attach(lenet())
    train_with_method(model, first, random_batches(6), epochs=2)
    save_model(tmp_path / "m.pt", first.finalize(model), meta(), name)
    model, _ = load_model(tmp_path / "m.pt")
    before = {n: getattr(m, MASK).clone() for n, m in masked_layers(model).items()}
    sparsity = zeros_of(model)
    later = create_method(name, 0.8, {"s_init": -3.0} if name == "str" else {})
    model = later.attach(model)
    train_with_method(model, later, random_batches(6, seed=3), epochs=2)
    final = later.finalize(model)
    assert zeros_of(final) == sparsity
    for n, m in masked_layers(final).items():  # fixed masks
        assert torch.equal(getattr(m, MASK), before[n]), n


# --------------------------------------------------------------------------- resume

def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name, options, stop", [
    ("gmp", {"start": 0.0, "end": 0.8, "frequency": 2}, 6),  # mid-schedule
    ("st3", {"start": 0.0, "end": 0.6}, 6),  # mid-schedule
    ("st3", {"start": 0.0, "end": 0.4}, 12),  # after the fix
    ("st3_sigma", {"start": 0.0, "end": 0.6}, 6),
    ("dnw", {}, 6),
    ("str", {"s_init": -3.0}, 6),
])
def test_resume_gives_the_same_masks_as_an_uninterrupted_run(name, options, stop):
    """The order of ``safs.stages.train.fit`` on resume: attach a fresh model, build the
    optimizer, load the model and optimizer state, method.load_state_dict, attach again,
    on_train_start(steps_per_epoch, epochs, start_epoch)."""
    data, spe, epochs = random_batches(6), 6, 3

    def masks(model):
        with torch.no_grad():
            return torch.cat([(m.effective_weight() if hasattr(m, "effective_weight") else m.weight).flatten()
                              for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])

    def run(model, method, opt, start, record):
        method.on_train_start(spe, epochs, start // spe)
        for t in range(start, spe * epochs):
            method_step(model, method, opt, *data[t % spe])
            record.append(masks(model))

    method = create_method(name, 0.8, options)
    model = method.attach(lenet())
    opt = method_sgd(model, method)
    reference = []
    run(model, method, opt, 0, reference)

    method = create_method(name, 0.8, options)
    model = method.attach(lenet())
    opt = method_sgd(model, method)
    first = []
    method.on_train_start(spe, epochs, 0)
    for t in range(stop):
        method_step(model, method, opt, *data[t % spe])
        first.append(masks(model))
    saved = roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict(), "method": method.state_dict()})

    method = create_method(name, 0.8, options)
    model = method.attach(lenet(seed=5))  # different initial weights: everything comes from the checkpoint
    opt = method_sgd(model, method)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    method.load_state_dict(saved["method"])
    model = method.attach(model)
    rest = []
    run(model, method, opt, stop, rest)
    assert len(first + rest) == len(reference)
    for t, (a, b) in enumerate(zip(first + rest, reference)):
        assert torch.equal(a == 0, b == 0), f"masks differ after step {t + 1}"
        assert torch.allclose(a, b, atol=1e-6), f"weights differ after step {t + 1}"


# --------------------------------------------------------------------------- real pipelines

PIPELINE = """
name: {name}
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: {method}, target: {target}, options: {options}}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: sparse, kind: train, epochs: 1, sparse: true}}
  - {{name: search, kind: activation_search, algorithm: random, options: {{samples: 2}}, epochs_per_candidate: 1}}
  - {{name: final, kind: train, epochs: 1}}
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ALL)
def test_pipeline_with_an_activation_search(method, tmp_path):
    """Sparse training from scratch (1 epoch; the later stages run the method too, so the
    masks are kept) -> activation search (random, 2 candidates, 1 epoch) -> final (1 epoch).
    No prune stage: these are during-training methods, the pipeline refuses one."""
    from conftest import safs_cmd, subprocess_env
    from conftest import by_stage, kill_ray_leftovers, records

    target = 0.8
    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(name=f"m_{method}", method=method, target=target, options="{}"))
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    try:
        p = subprocess.run(safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"],
                           cwd=tmp_path, env=subprocess_env(RAY_TMPDIR=ray_tmp), capture_output=True, text=True,
                           timeout=280)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = records(results / f"m_{method}")
    rows = {s: by_stage(recs, s)["row"] for s in ("sparse", "search", "final")}
    achieved = {s: r["achieved_sparsity"] for s, r in rows.items()}
    assert by_stage(recs, "search")["search"]["candidates"] == 2
    for s, a in achieved.items():  # every method honours the target (STR through its target mode)
        assert a == pytest.approx(target, abs=0.005), (s, achieved)
